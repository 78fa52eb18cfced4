"""What the design rests on, measured on the installed Prefect: start-up, cost per task run, tag leases.

    .venv/bin/python bench/prefect_costs.py [--only startup tasks tags] [--python OTHER_VENV/bin/python]

Sections (each measurement in fresh child processes; `--python` runs them with another
interpreter, e.g. a venv with another Prefect version: the children import Prefect only):
- startup: the temporary (ephemeral) server of a process — import prefect, first API call (the
  server starts, with migrations on a fresh PREFECT_HOME), first and second trivial flow run —
  on a fresh and on a warm PREFECT_HOME; and `prefect server start` until /api/health answers.
- tasks: N trivial task runs submitted on a ThreadPoolTaskRunner in one flow: wall and CPU per
  task run (flow process and its ephemeral server), and how long until the server has recorded
  every one of them as Completed.
- tags: start-like task runs (0.1 s body), untagged vs one tag vs the flow's three tags
  (`openeo`, `openeo-backend:…`, `openeo-account:…`), no limit on any, vs tagged with a tag
  concurrency limit (1000, never reached), `--tag-rounds` times each in rotated order: median
  wall time, the delay from submit to the body starting less the queueing for a free worker,
  and the time inside the task engine's slot call for the run's tags.
- demo (project code, this interpreter): wall time of `python -m flows.run_jobs --demo`.
The slot ledger and the two-run scenario are in bench/slots.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- children
def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def server_cpu() -> float:
    """CPU seconds of this process's child processes still running (the ephemeral server)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rfind(")") + 2:].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, ValueError):
                continue
    return total


def child_startup() -> Dict[str, Any]:
    t0 = time.perf_counter()
    import prefect
    from prefect import flow
    from prefect.client.orchestration import get_client

    out: Dict[str, Any] = {"prefect": prefect.__version__, "import_s": time.perf_counter() - t0}
    t = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.hello()
    out["server_up_s"] = time.perf_counter() - t

    @flow
    def noop() -> int:
        return 1

    for key in ("first_flow_run_s", "second_flow_run_s"):
        t = time.perf_counter()
        noop()
        out[key] = time.perf_counter() - t
    out["in_process_total_s"] = time.perf_counter() - t0
    return out


def count_completed(client, flow_run_id: str, expected: int) -> int:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, \
        TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType

    found, offset = 0, 0
    while True:
        page = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))),
            limit=200, offset=offset)
        found += len(page)
        offset += len(page)
        if len(page) < 200 or found >= expected:
            return found


def child_tasks(n: int, workers: int, settle: float) -> Dict[str, Any]:
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.futures import wait
    from prefect.runtime import flow_run
    from prefect.task_runners import ThreadPoolTaskRunner

    @task
    def noop(i: int) -> int:
        return i

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def many(count: int) -> str:
        futures = [noop.submit(i) for i in range(count)]
        wait(futures)
        return str(flow_run.id)

    many(5)  # warm-up: server up, task registered
    t0 = time.perf_counter()
    many(0)
    empty_flow = time.perf_counter() - t0
    cpu0, srv0, t0 = own_cpu(), server_cpu(), time.perf_counter()
    flow_run_id = many(n)
    wall, cpu = time.perf_counter() - t0, own_cpu() - cpu0
    out: Dict[str, Any] = {"n": n, "workers": workers, "wall_s": wall, "empty_flow_s": empty_flow,
                           "wall_per_task_ms": 1000 * (wall - empty_flow) / n, "flow_cpu_per_task_ms": 1000 * cpu / n}
    with get_client(sync_client=True) as client:
        t1, recorded = time.perf_counter(), 0
        while time.perf_counter() - t1 < settle:
            recorded = count_completed(client, flow_run_id, n)
            if recorded >= n:
                break
            time.sleep(1.0)
        out.update(recorded_completed=recorded, all_recorded_after_s=(time.perf_counter() - t1) if recorded >= n else None)
    out["server_cpu_per_task_ms"] = 1000 * (server_cpu() - srv0) / n
    return out


TAG_MODES = ("untagged", "tagged_no_limit", "three_tags_no_limit", "tagged_with_limit")


def child_tags(n: int, workers: int, body_s: float, rounds: int = 3) -> Dict[str, Any]:
    """Each mode `rounds` times, in a rotated order (no mode always first or last); per mode the
    median wall time, the delay submit -> body, and the time the task engine spent in its slot
    call for the run's tags (`prefect.task_engine._concurrency`, entered before the body)."""
    import contextlib
    import statistics
    import threading
    import uuid

    import prefect.task_engine as engine
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.task_runners import ThreadPoolTaskRunner

    slot_calls: List[float] = []
    lock = threading.Lock()
    original = engine._concurrency

    @contextlib.contextmanager
    def timed_concurrency(*args, **kwargs):
        t0 = time.perf_counter()
        with original(*args, **kwargs):
            with lock:
                slot_calls.append(time.perf_counter() - t0)
            yield

    engine._concurrency = timed_concurrency
    # the slot requests that reach the server (Prefect caches "no limit on these tags" for 5 s)
    from prefect.client.orchestration._concurrency_limits.client import ConcurrencyLimitAsyncClient

    slot_requests: List[float] = []
    increment = ConcurrencyLimitAsyncClient.increment_concurrency_slots_with_lease

    async def counted_increment(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return await increment(self, *args, **kwargs)
        finally:
            slot_requests.append(time.perf_counter() - t0)

    ConcurrencyLimitAsyncClient.increment_concurrency_slots_with_lease = counted_increment

    @task
    def start_like(submitted: float) -> float:
        began = time.time()
        time.sleep(body_s)
        return began - submitted

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def starts(tags: List[str], count: int) -> List[float]:
        runner = start_like.with_options(tags=tags) if tags else start_like
        futures = [runner.submit(time.time()) for _ in range(count)]
        return [f.result() for f in futures]

    starts([], 3)  # warm-up
    t0 = time.perf_counter()
    starts([], 0)
    empty_flow = time.perf_counter() - t0
    tag_free, tag_limited = f"bench-free-{uuid.uuid4().hex[:6]}", f"bench-limit-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag_limited, concurrency_limit=1000)  # never the bottleneck
    # as flows/config/limits.py task_tags: openeo, the backend, the account (origin~user)
    flow_like = ["openeo", f"openeo-backend:{tag_free}", f"openeo-account:127.0.0.1:8000~{tag_free}"]
    tags_of = {"untagged": [], "tagged_no_limit": [tag_free], "three_tags_no_limit": flow_like,
               "tagged_with_limit": [tag_limited]}
    samples: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in TAG_MODES}
    for r in range(rounds):
        for mode in TAG_MODES[r % len(TAG_MODES):] + TAG_MODES[:r % len(TAG_MODES)]:
            del slot_calls[:], slot_requests[:]
            t0 = time.perf_counter()
            delays = starts(tags_of[mode], n)
            wall = time.perf_counter() - t0
            # delay submit -> body for a task that had a free worker: subtract the queueing for workers
            queued = [max(0.0, d - (i // workers) * body_s) for i, d in enumerate(delays)]
            samples[mode].append({"wall_s": wall, "submit_to_body_mean_ms": 1000 * sum(queued) / n,
                                  "slot_call_mean_ms": 1000 * statistics.mean(slot_calls) if slot_calls else 0.0,
                                  "slot_requests": len(slot_requests),
                                  "slot_request_mean_ms": 1000 * statistics.mean(slot_requests) if slot_requests else 0.0})
    out: Dict[str, Any] = {"n": n, "workers": workers, "body_s": body_s, "rounds": rounds, "empty_flow_s": empty_flow,
                           "ideal_wall_s": -(-n // workers) * body_s}
    for mode, runs in samples.items():
        out[mode] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        out[mode]["wall_s_all"] = [round(run["wall_s"], 2) for run in runs]
    return out


def child_main(argv: List[str]) -> None:
    what, out_path, params = argv[0], argv[1], json.loads(argv[2])
    result = {"startup": child_startup, "tasks": child_tasks, "tags": child_tags}[what](**params)
    Path(out_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------- parent
def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_child(python: str, what: str, home: Path, params: Dict[str, Any], timeout: float = 600) -> Dict[str, Any]:
    out = Path(tempfile.mkstemp(prefix=f"costs-{what}-", suffix=".json")[1])
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    # a loaded machine starts the ephemeral server slower than Prefect's default allowance (20 s)
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    env.setdefault("PREFECT_API_REQUEST_TIMEOUT", "300")  # and answers slower than the client's 60 s
    env.pop("PREFECT_API_URL", None)
    t0, load0 = time.perf_counter(), load()
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--child", what, str(out), json.dumps(params)],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd="/tmp")
    result = json.loads(out.read_text()) if proc.returncode == 0 and out.stat().st_size else \
        {"error": proc.stderr[-1500:]}
    out.unlink(missing_ok=True)
    result.update(process_wall_s=time.perf_counter() - t0, load_before=load0, load_after=load())
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_start(python: str, home: Path) -> Dict[str, Any]:
    """`prefect server start` until /api/health answers 200; then stopped."""
    port, load0 = free_port(), load()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")
    up: Optional[float] = None
    try:
        while time.perf_counter() - t0 < 180 and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    if response.status == 200:
                        up = time.perf_counter() - t0
                        break
            except OSError:
                pass
            time.sleep(0.1)  # polling another process's start-up: nothing to wait on
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"healthy_after_s": up, "load_before": load0}


def section_startup(python: str, rounds: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {"ephemeral": [], "server_start": []}
    for _ in range(rounds):
        home = Path(tempfile.mkdtemp(prefix="prefect-home-"))
        try:
            for label in ("fresh", "warm"):
                r = run_child(python, "startup", home, {})
                out["ephemeral"].append({"home": label, **r})
                print(f"  ephemeral, {label} home: {fmt(r)}", flush=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        home = Path(tempfile.mkdtemp(prefix="prefect-home-"))
        try:
            for label in ("fresh", "warm"):
                r = server_start(python, home)
                out["server_start"].append({"home": label, **r})
                print(f"  prefect server start, {label} home: {fmt(r)}", flush=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return out


def section_demo(root: Path) -> Dict[str, Any]:
    """`python -m flows.run_jobs --demo` in `root` (a checkout), warm bench PREFECT_HOME."""
    work = Path(tempfile.mkdtemp(prefix="costs-demo-"))
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(Path.home() / ".cache" / "openeo-prefect-bench" / "prefect"))}
    env.pop("PREFECT_API_URL", None)
    load0, t0 = load(), time.perf_counter()
    cli = (root / "flows" / "cli.py").read_text()
    flags = [f for f in ("--json", "--no-live") if f'"{f}"' in cli]  # older checkouts lack them
    proc = subprocess.run([sys.executable, "-m", "flows.run_jobs", "--demo", *flags, "--output-dir", str(work / "demo")],
                          cwd=str(root), env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    elapsed = None
    try:
        elapsed = json.loads(proc.stdout[proc.stdout.index("{"):])["elapsed_seconds"]
    except (ValueError, KeyError):
        pass
    shutil.rmtree(work, ignore_errors=True)
    return {"root": str(root), "exit_code": proc.returncode, "wall_s": wall, "flow_elapsed_s": elapsed,
            "outside_flow_s": None if elapsed is None else wall - elapsed, "load_before": load0,
            "stderr_tail": proc.stderr[-600:] if proc.returncode not in (0, 1) else ""}


def fmt(r: Dict[str, Any]) -> str:
    return ", ".join(f"{k} {round(v, 3) if isinstance(v, float) else v}" for k, v in r.items()
                     if not isinstance(v, dict) and k != "stderr_tail")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["startup", "tasks", "tags", "demo"],
                        default=["startup", "tasks", "tags", "demo"])
    parser.add_argument("--python", default=sys.executable, help="interpreter for the Prefect-only children")
    parser.add_argument("--rounds", type=int, default=2, help="start-up measurements per kind")
    parser.add_argument("--tasks", type=int, nargs="+", default=[200, 1000], help="task runs per flow (tasks)")
    parser.add_argument("--workers", type=int, default=8, help="ThreadPoolTaskRunner workers (tasks)")
    parser.add_argument("--tag-tasks", type=int, default=40)
    parser.add_argument("--tag-workers", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--tag-rounds", type=int, default=3, help="rounds of each tag mode, in rotated order (tags)")
    parser.add_argument("--demo-root", default=str(ROOT), help="checkout whose --demo to time")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    report: Dict[str, Any] = {"python": args.python}
    version = subprocess.run([args.python, "-c", "import prefect; print(prefect.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    report["prefect"] = version
    print(f"Prefect {version} ({args.python}); load {load()}", flush=True)
    warm_home = Path(tempfile.mkdtemp(prefix="prefect-home-warm-"))
    try:
        if "startup" in args.only:
            print("startup:", flush=True)
            report["startup"] = section_startup(args.python, args.rounds)
        if "tasks" in args.only:
            print("tasks:", flush=True)
            report["tasks"] = []
            for n in args.tasks:
                r = run_child(args.python, "tasks", warm_home, {"n": n, "workers": args.workers, "settle": 120.0})
                report["tasks"].append(r)
                print(f"  {fmt(r)}", flush=True)
        if "tags" in args.only:
            print("tags:", flush=True)
            report["tags"] = []
            for workers in args.tag_workers:
                r = run_child(args.python, "tags", warm_home, {"n": args.tag_tasks, "workers": workers, "body_s": 0.1,
                                                               "rounds": args.tag_rounds}, timeout=1800)
                report["tags"].append(r)
                print(f"  workers {workers}, {args.tag_tasks} task runs, ideal {r.get('ideal_wall_s')} s, "
                      f"load {r['load_before']}" + (f": {r['error']}" if "error" in r else ""), flush=True)
                for mode in TAG_MODES:
                    if mode in r:
                        print(f"    {mode}: {fmt(r[mode])}", flush=True)
    finally:
        shutil.rmtree(warm_home, ignore_errors=True)
    if "demo" in args.only:
        print("demo:", flush=True)
        report["demo"] = section_demo(Path(args.demo_root))
        print(f"  {fmt(report['demo'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
