"""How long a stop takes, per mode: from the signal (or Cancel) to the run's end and to the exit.

    python bench/stops.py                                  # every mode, once (~3-6 min on a loaded machine)
    python bench/stops.py --modes cli script --runs 3 --poll 600
    python bench/stops.py --root /tmp/before               # another checkout (git worktree add /tmp/before <commit>)
    python bench/stops.py --modes script --scale 2500 --active 400   # a big run: scale.py's shape (see below)

Each mode runs 4 rows on one simulated backend (`parallel_jobs=2`, jobs that run for 10 min),
waits until 2 jobs run, then stops the run the way that mode is stopped, with a poll interval of
`--poll` seconds (the stop must not wait for it). Printed per mode, in seconds after the signal:
`line` the first `stopping:` line on stderr, `ended` the run released its job DB (persisted, lock
gone), `exit` the process is gone; and `CPU s`, the CPU seconds the stopping process and its
descendants (a CLI's or a script's Prefect server) spent from the signal to its exit: what a loaded
machine multiplies (wall ~ CPU x load / cores, roughly). The target
(issue 16) is exit <= 3 s.

`--held-starts`: the backend holds every start request (a start takes ~14 s on CDSE; here it is
never answered while the run lives): the stop comes once the run's 2 starts are held.

`--scale ROWS` stops a big run instead, the shape of bench/scale.py: ROWS rows on 2 simulated
backends x `--slots` (200) slots, 20 start workers, jobs of `--job-seconds` (30), results downloaded;
the stop comes once `--active` jobs are queued or running (in the job DB).

Modes:
  cli          `python -m flows.run_jobs ...` as users get it (its own Prefect server), Ctrl-C to its
               process group
  cli-server   the same with PREFECT_API_URL naming a `prefect server` (the bench's), Ctrl-C
  script       a script calling `run_jobs()` with no server configured (Prefect's temporary server in
               the script's process group), Ctrl-C to the group
  sigterm      a flow-run process against a server, SIGTERM to it alone (what a worker sends on
               Cancel or its own shutdown; a scheduler's or systemd's stop)
  cancel       the same process, its flow run set Cancelling through the API (Cancel in the UI of a
               run no worker watches)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("cli", "cli-server", "script", "sigterm", "cancel")
CALLBACK = "flows.tiling.demo_callbacks:start_job"
PASSWORD_ENV = "BENCH_OPENEO_PASSWORD"
START_ROUTE = "POST /jobs/{id}/results"
SCRIPT = ("import json, sys\nfrom flows.run_jobs import RunInterrupted, run_jobs\n"
          "try:\n    run_jobs(**json.loads(sys.argv[1]))\nexcept RunInterrupted:\n    sys.exit(130)\n")


def env_for(root: Path, home: Path, api_url: Optional[str], password: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(root),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300", **{PASSWORD_ENV: password})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def active(db: Path) -> int:
    import pandas as pd

    from jobdb.status import QUEUED, RUNNING

    try:
        return int(pd.read_parquet(db)["status"].isin([QUEUED, RUNNING]).sum())
    except (OSError, ValueError):
        return 0


@dataclass(frozen=True)
class Shape:
    """The run that is stopped: the small default, or a big one (`--scale`)."""

    rows: int = 4
    backends: int = 1
    slots: int = 2
    start_workers: int = 5
    job_seconds: float = 600.0
    active: int = 2  # the stop comes once this many jobs are queued or running
    held_starts: bool = False  # the backend holds every start request: the stop comes once `slots` are held


def one_stop(mode: str, root: Path, work: Path, poll: float, api_url: Optional[str], home: Path,
             spy: bool = False, profile: Optional[Path] = None, shape: Shape = Shape()) -> Dict[str, float]:
    from jobdb import JobDbPaths
    from simulator import start_simulator
    from tests.flow_helpers import fast_config, make_db

    run_dir = work / f"{mode}-{time.monotonic_ns()}"
    run_dir.mkdir()
    db = make_db(run_dir / "jobs.parquet", shape.rows)
    lock_note = JobDbPaths.of(db).lock_holder
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(start_simulator(fast_config(queue_time=0.2, run_time=shape.job_seconds)))
                for _ in range(shape.backends)]
        if shape.held_starts:  # as a start that takes ~14 s on CDSE, here until the process has exited
            for held in sims:
                held.gates.close(START_ROUTE)
            stack.callback(lambda: [held.gates.open() for held in sims])  # before the simulators stop
        names = "abcdefgh"
        specs = [f"{names[i]}={sim.url},parallel_jobs={shape.slots},user=bench,password_env={PASSWORD_ENV}"
                 for i, sim in enumerate(sims)]
        kwargs = dict(job_db=str(db), start_job=CALLBACK, poll_interval_seconds=poll, max_start_workers=shape.start_workers,
                      backends=[{"name": names[i], "url": sim.url, "parallel_jobs": shape.slots,
                                 "auth": {"type": "basic", "username": "bench", "password_env": PASSWORD_ENV}}
                                for i, sim in enumerate(sims)])
        sim = sims[0]
        if mode in ("cli", "cli-server"):
            argv = [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), *[a for s in specs for a in ("--backend", s)],
                    "--start-job", CALLBACK, "--poll-interval", str(poll), "--no-live",
                    "--max-start-workers", str(shape.start_workers)]
        else:  # a user's script; for sigterm/cancel, what a worker's flow-run process runs
            (run_dir / "script.py").write_text(SCRIPT)
            argv = [sys.executable, str(run_dir / "script.py"), json.dumps(kwargs)]
        server = api_url if mode in ("cli-server", "sigterm", "cancel") else None
        child = subprocess.Popen(argv, cwd=root, env=env_for(root, home, server, sim.config.password),
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times: Dict[str, float] = {}
        t0 = [0.0]
        tail: List[str] = []

        def read() -> None:
            for line in child.stderr:
                tail.append(line)
                del tail[:-40]
                if t0[0] and "line" not in times and "stopping" in line.lower():
                    times["line"] = time.monotonic() - t0[0]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 600
            while (sum(s.gates.held().get(START_ROUTE, 0) for s in sims) < shape.slots if shape.held_starts
                   else active(db) < shape.active):
                if child.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: no {shape.active} jobs running (exit {child.poll()}):\n{''.join(tail)}")
                time.sleep(0.1)  # a bench watching another process's file; not a test
            cpu_before = cpu_seconds(child.pid)
            t0[0] = time.monotonic()
            trace = profile / f"{mode}-{len(list(profile.glob(mode + '-*.json')))}.json" if profile else None
            recorder = record_profile(child.pid, trace) \
                if profile else None
            if mode in ("cli", "cli-server", "script"):
                os.killpg(child.pid, signal.SIGINT)
            elif mode == "sigterm":
                child.send_signal(signal.SIGTERM)
            else:
                cancel(api_url, json.loads(lock_note.read_text())["flow_run_id"])
            spied = 0.0
            usage = None
            while usage is None and time.monotonic() - t0[0] < poll + 120:
                usage = reap(child)
                if usage is not None:
                    break
                if "ended" not in times and run_ended(lock_note):
                    times["ended"] = time.monotonic() - t0[0]
                if spy and time.monotonic() - spied > 0.5:
                    spied = time.monotonic()
                    dump_stacks(child.pid, spied - t0[0], work / f"{mode}.stacks")
                time.sleep(0.02)  # a bench watching another process; not a test
            if usage is None:
                raise SystemExit(f"{mode}: no exit {poll + 120:.0f} s after the stop:\n{''.join(tail)}")
            times["exit"] = time.monotonic() - t0[0]
            times["cpu"] = usage.ru_utime + usage.ru_stime - cpu_before
            if recorder is not None:
                recorder.wait(30)
                print(main_thread_timeline(trace, child.pid), flush=True)
            times.setdefault("ended", times["exit"])
            reader.join(10)
            if child.returncode != 130:
                print(f"  {mode}: exit code {child.returncode}:\n{''.join(tail[-15:])}")
            times["code"] = child.returncode
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)
    return times


def cpu_seconds(pid: int) -> float:
    """CPU seconds so far of the process and its descendants (its Prefect server, if any): the same
    processes whose CPU its exit status reports (wait4) once it has reaped them."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in [process] + process.children(recursive=True):
        try:
            times = each.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def reap(child: subprocess.Popen):
    """The child's resource usage once it has exited (its whole CPU time), else None."""
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid == 0:
        return None
    child.returncode = os.waitstatus_to_exitcode(status)
    return usage


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")  # installed in the venv, maybe not on PATH
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def record_profile(pid: int, into: Path) -> subprocess.Popen:
    """--profile: py-spy samples every thread of the stopping process (idle ones too) until it exits,
    as a Chrome trace (open it in https://ui.perfetto.dev; `main_thread_timeline` prints the gist)."""
    into.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--format", "chrometrace",
                             "--rate", "100", "--idle", "--threads", "--nonblocking", "-o", str(into)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


OWN_CODE = ("flows/", "tasks/", "jobdb/", "script.py")


def main_thread_timeline(trace: Path, pid: int, shortest: float = 0.05) -> str:
    """Where the main thread was, from the signal (about: py-spy's start) to the exit, as spans of
    at least `shortest` seconds: the innermost frame of the project's own code, then the innermost
    frame below it (`-` where Python ran no frame: the interpreter's own teardown)."""
    try:
        events = json.loads(trace.read_text())
    except (OSError, ValueError) as exc:
        return f"  (no profile: {exc})"
    stack: List[dict] = []
    spans: List[list] = []  # [start s, end s, label]

    def label() -> str:
        frames = [f"{e['name']} ({e['args']['filename'].split('site-packages/')[-1]}:{e['args']['line']})"
                  for e in stack[1:]]
        own = [i for i, e in enumerate(stack[1:]) if any(part in e["args"]["filename"] for part in OWN_CODE)]
        if not frames:
            return "-"
        head = frames[own[-1]] if own else frames[0]
        return head if not own or own[-1] == len(frames) - 1 else f"{head} > {frames[-1]}"

    main = [e for e in events if e.get("ph") in ("B", "E") and e.get("tid") is not None]
    main_tid = next((e["tid"] for e in main if e["name"].startswith(f"thread ({pid})")), None)
    for event in (e for e in main if e["tid"] == main_tid):
        now = event["ts"] / 1e6
        if spans and spans[-1][1] is None:
            spans[-1][1] = now
        if event["ph"] == "B":
            stack.append(event)
        elif stack:
            stack.pop()
        if stack:
            spans.append([now, None, label()])
    merged: List[list] = []
    for start, end, what in spans:
        if end is None:
            continue
        if merged and merged[-1][2] == what:
            merged[-1][1] = end
        else:
            merged.append([start, end, what])
    lines = [f"  {start:6.2f}-{end:6.2f} s  {what}" for start, end, what in merged if end - start >= shortest]
    return f"  main thread of {trace.name}:\n" + "\n".join(lines)


def run_ended(lock_note: Path) -> bool:
    """The run persisted and released its job DB (a run whose API went with it leaves its end in the note)."""
    try:
        return not lock_note.exists() or "unrecorded_end" in lock_note.read_text()
    except OSError:
        return False


def dump_stacks(pid: int, at: float, into: Path) -> None:
    """--spy: every thread's stack now (py-spy, when installed), to see where a slow stop spends its time."""
    done = subprocess.run([py_spy(), "dump", "--pid", str(pid)], capture_output=True,
                          text=True)
    with into.open("a") as out:
        out.write(f"===== {at:.2f} s after the stop\n{done.stdout}{done.stderr}\n")


def cancel(api_url: str, flow_run_id: str) -> None:
    import httpx

    body = {"state": {"type": "CANCELLING", "message": "cancelled (bench)"}, "force": True}
    httpx.post(f"{api_url}/flow_runs/{flow_run_id}/set_state", json=body, timeout=30).raise_for_status()


def spread(values: List[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="checkout whose flow is measured")
    parser.add_argument("--modes", nargs="*", choices=MODES, default=list(MODES))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--poll", type=float, default=60.0, help="the runs' poll interval (seconds)")
    parser.add_argument("--profile", metavar="DIR", help="diagnostics: py-spy record of the stopping process from "
                        "the signal to its exit, every thread, collapsed stacks into DIR/<mode>-<n>.txt")
    parser.add_argument("--spy", metavar="DIR", help="diagnostics: py-spy dumps of the stopping process every 0.5 s, "
                        "into DIR/<mode>.stacks (pip install py-spy)")
    parser.add_argument("--scale", type=int, metavar="ROWS", help="stop a big run of ROWS rows on 2 backends (scale.py's shape)")
    parser.add_argument("--slots", type=int, default=200, help="with --scale: job slots per backend")
    parser.add_argument("--active", type=int, default=400, help="with --scale: stop once this many jobs are active")
    parser.add_argument("--job-seconds", type=float, default=30.0, help="with --scale: how long each job runs")
    parser.add_argument("--held-starts", action="store_true", help="the backend holds every start request (a "
                        "slow start, here never answered): the stop comes once the run's 2 starts are held")
    args = parser.parse_args()
    shape = Shape(rows=args.scale, backends=2, slots=args.slots, start_workers=20, job_seconds=args.job_seconds,
                  active=args.active) if args.scale else Shape(held_starts=args.held_starts)
    root = Path(args.root).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench_stops_"))
    server = None
    print(f"checkout {root}; poll interval {args.poll:.0f} s; load {os.getloadavg()[0]:.1f}")
    print(f"{'mode':<11} {'stopping: line':>16} {'run ended':>16} {'exit':>16} {'CPU s':>16}  exit codes")
    try:
        if set(args.modes) & {"cli-server", "sigterm", "cancel"}:
            from tests.prefect_server import PrefectServer

            (work / "server-home").mkdir()
            server = PrefectServer(work / "server-home")
        for mode in args.modes:
            home = work / "home"  # one for the runs without a server: only the first one migrates it
            results = [one_stop(mode, root, work, args.poll, server and server.api_url, home, bool(args.spy),
                                Path(args.profile) if args.profile else None, shape)
                       for _ in range(args.runs)]
            print(f"{mode:<11} {spread([r['line'] for r in results if 'line' in r]):>16} "
                  f"{spread([r['ended'] for r in results]):>16} {spread([r['exit'] for r in results]):>16} "
                  f"{spread([r['cpu'] for r in results]):>16}  "
                  f"{sorted({r['code'] for r in results})}", flush=True)
        print(f"load {os.getloadavg()[0]:.1f}")
        if args.spy:
            Path(args.spy).mkdir(parents=True, exist_ok=True)
            for stacks in work.glob("*.stacks"):
                shutil.copy(stacks, Path(args.spy) / stacks.name)
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
