"""Start-up cost of the command line: from the command to the first job created, and `--demo` wall.

    python bench/startup.py                      # warm and fresh PREFECT_HOME, 2 runs each (~3-4 min)
    python bench/startup.py --runs 3 --only warm
    python bench/startup.py --root /tmp/before   # another checkout's CLI (git worktree add /tmp/before <commit>)
    python bench/startup.py --alternate /tmp/before --runs 3   # before, this, before, this, ... (one load)
    python bench/startup.py --only server --runs 3             # against a running `prefect server` (PREFECT_API_URL)
    python bench/startup.py --only server --alternate /tmp/before --runs 3

"first job" = the simulator sees the first `POST /jobs` (the bench's own simulator, one backend,
8 rows); the command is `python -m flows.run_jobs --job-db ... --backend ... --start-job ... --no-live`
with no `PREFECT_API_URL`, i.e. the CLI starts its own Prefect server as users get it. "warm": a
PREFECT_HOME a run has used before (database migrated); "fresh": an empty one; "server": a
`prefect server start` the bench starts once beforehand, named to the CLI by `PREFECT_API_URL` (the
production shape, or a local `prefect server start --background`), so the CLI starts no server of
its own. Also prints the
wall of one bad-input command (a wrong --poll-interval) and of the whole run. Loopback only.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobdb.status import NOT_STARTED  # noqa: E402


def cli_env(root: Path, home: Path, api_url: Optional[str] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(root),
               BENCH_OPENEO_PASSWORD="secret")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def first_job(root: Path, home: Path, work: Path, api_url: Optional[str] = None) -> Dict[str, float]:
    """Seconds from the command to the first POST /jobs, and to the command's exit."""
    from jobdb import JobDatabase
    from simulator import start_simulator
    from tests.flow_helpers import fast_config, make_db

    db = make_db(work / f"jobs-{time.monotonic_ns()}.parquet", 8)
    assert JobDatabase.open(db).df["status"].eq(NOT_STARTED).all()
    with start_simulator(fast_config()) as sim:
        command = [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), "--no-live",
                   "--backend", f"sim={sim.url},parallel_jobs=4,user=bench,password_env=BENCH_OPENEO_PASSWORD",
                   "--start-job", "flows.tiling.demo_callbacks:start_job", "--poll-interval", "0.5"]
        t0 = time.monotonic()
        process = subprocess.Popen(command, cwd=root, env=cli_env(root, home, api_url), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        created, cpu = None, {}
        while process.poll() is None and created is None:
            if any(k.startswith("POST /jobs") and "results" not in k for k in sim.counters()["requests"]):
                created = time.monotonic() - t0
                cpu = cpu_seconds(process.pid)
            else:
                time.sleep(0.02)  # a bench polling another process; not a test
        _, err = process.communicate(timeout=300)
        total = time.monotonic() - t0
    if process.returncode != 0 or created is None:
        raise SystemExit(f"run failed ({process.returncode}): {err[-2000:]}")
    return {"first_job": created, "total": total, **cpu}


def cpu_seconds(pid: int) -> Dict[str, float]:
    """CPU seconds (user + system) so far of the CLI's own process and of its descendants (the
    watchdog and the Prefect server): what wall time hides on a loaded machine."""
    import psutil

    def used(process: "psutil.Process") -> float:
        try:
            times = process.cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    cli = psutil.Process(pid)
    return {"cpu_cli": used(cli), "cpu_server": sum(used(child) for child in cli.children(recursive=True))}


def demo(root: Path, home: Path, work: Path, api_url: Optional[str] = None) -> float:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows.run_jobs", "--demo", "--no-live", "--output-dir",
                           str(work / "demo")], cwd=root, env=cli_env(root, home, api_url), capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"--demo failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.monotonic() - t0


def bad_input(root: Path, home: Path) -> float:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows.run_jobs", "--job-db", "x.csv", "--backend",
                           "a=http://127.0.0.1:9", "--start-job", "m:f", "--poll-interval", "-1"], cwd=root,
                          env=cli_env(root, home), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    return time.monotonic() - t0


def alternate(roots: Dict[str, Path], runs: int, work: Path, warm_home=None, api_url: Optional[str] = None,
              demos: bool = False) -> int:
    for name, root in roots.items():
        home = work / f"home-{name}"
        if warm_home:
            shutil.copytree(warm_home, home)
        first_job(root, home, work, api_url)  # warms the home and the file cache
    for _ in range(runs):
        for name, root in roots.items():
            load = os.getloadavg()[0]
            r = first_job(root, work / f"home-{name}", work, api_url)
            print(f"{name} ({root}): first job {r['first_job']:.1f} s, whole run {r['total']:.1f} s, CPU CLI "
                  f"{r['cpu_cli']:.1f} s, server {r['cpu_server']:.1f} s (load {load:.1f})", flush=True)
            if demos:
                load = os.getloadavg()[0]
                print(f"{name} ({root}): --demo wall {demo(root, work / f'home-{name}', work, api_url):.1f} s "
                      f"(load {load:.1f})", flush=True)
    return 0


@contextlib.contextmanager
def running_prefect_server(work: Path) -> Iterator[str]:
    """A `prefect server start` of its own (tests/prefect_server.py), up before any command is timed."""
    from tests.prefect_server import PrefectServer

    home = work / "server-home"
    home.mkdir()
    server = PrefectServer(home)
    try:
        yield server.api_url
    finally:
        server.close()


def spread(values: List[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f} s"
    return f"{statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="checkout whose CLI is measured")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", choices=("warm", "fresh", "server"), nargs="*", default=["warm", "fresh"])
    parser.add_argument("--warm-home", metavar="DIR", help="a PREFECT_HOME used before (copied; default: warm one "
                        "with a first run, which on a loaded machine may outlast the CLI's server start timeout)")
    parser.add_argument("--alternate", metavar="ROOT", help="only command -> first job, warm: runs of ROOT's and "
                        "--root's CLI taken in turn, each on its own copy of one warm home (a moving load hits both); "
                        "with --only server: both against one running Prefect server, --demo walls too")
    parser.add_argument("--demos", action="store_true", help="with --alternate (own server): --demo walls too")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    if args.alternate:
        try:
            roots = {"other": Path(args.alternate).resolve(), "this": root}
            if "server" in args.only:
                with running_prefect_server(work) as api_url:
                    return alternate(roots, args.runs, work, args.warm_home, api_url, demos=True)
            return alternate(roots, args.runs, work, args.warm_home, demos=args.demos)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"checkout {root}; load {os.getloadavg()[0]:.1f}")
    try:
        print(f"bad input (exit 2): {bad_input(root, work / 'home-bad'):.1f} s")
        if "warm" in args.only:
            home = work / "home-warm"
            if args.warm_home:
                shutil.copytree(args.warm_home, home)
            first_job(root, home, work)  # warms the home (migrations) and the OS file cache
            runs = [first_job(root, home, work) for _ in range(args.runs)]
            print(f"warm: command -> first job created {spread([r['first_job'] for r in runs])}; "
                  f"whole 8-row run {spread([r['total'] for r in runs])}")
            print(f"warm: CPU until the first job: CLI process {spread([r['cpu_cli'] for r in runs])}; "
                  f"its server (watchdog + server) {spread([r['cpu_server'] for r in runs])}")
            demos = [demo(root, home, work) for _ in range(args.runs)]
            print(f"warm: --demo wall {spread(demos)}")
        if "server" in args.only:
            with running_prefect_server(work) as api_url:
                home = work / "home-client"
                first_job(root, home, work, api_url)  # the OS file cache; the server's first flow run
                runs = [first_job(root, home, work, api_url) for _ in range(args.runs)]
                print(f"server (PREFECT_API_URL set): command -> first job created "
                      f"{spread([r['first_job'] for r in runs])}; whole 8-row run {spread([r['total'] for r in runs])}")
                print(f"server: CPU until the first job: CLI process {spread([r['cpu_cli'] for r in runs])}")
                demos = [demo(root, home, work, api_url) for _ in range(args.runs)]
                print(f"server: --demo wall {spread(demos)}")
        if "fresh" in args.only:
            runs = [first_job(root, work / f"home-fresh-{i}", work) for i in range(args.runs)]
            print(f"fresh: command -> first job created {spread([r['first_job'] for r in runs])}; "
                  f"whole 8-row run {spread([r['total'] for r in runs])}")
            demos = [demo(root, work / f"home-fresh-demo-{i}", work) for i in range(args.runs)]
            print(f"fresh: --demo wall {spread(demos)}")
        print(f"load {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
