"""Scale benchmark of the run_jobs flow, and of the job DB.

    .venv/bin/python bench/scale.py [--rows 10000] [--db-rows 100000] [--json out.json]
                                     [--skip-flow] [--skip-db] [--no-download] [--root CHECKOUT]
                                     [--store file|postgresql] [--store-url postgresql://…]
                                     [--profile FILE] [--without-job-events] [--without-tags]

1. Flow: `--rows` rows over 2 simulated backends (fast jobs: queue 0.1 s, run 0.3 s, one 1 KiB
   asset), parallel_jobs 200 per backend, poll every 1 s, run to completion in a child process
   (the parent holds the simulators, so the child's RSS excludes them). Reports wall time,
   overhead per job, peak RSS (flow process, and with its Prefect server), job-DB persist
   time per save, time per cycle phase, and the task runs Prefect recorded for the flow run
   by final state, polled until all are final (the ephemeral server can fall behind).
   `--root` runs another checkout's flow (e.g. `git worktree add /tmp/before <commit>`);
   diagnostics: `--profile` (cProfile of the flow thread), `--without-job-events` (the per-status
   Prefect events patched out, to see what they cost), `--without-tags` (task runs without the
   openeo tags of flows/config/limits.py: what a tag with no limit costs). `--store postgresql`
   runs the same rows as a PostgreSQL campaign (a private cluster like the tests', or `--store-url`)
   instead of a Parquet file: the SQL store against the file store, side by side with two invocations.
2. Job DB: `--db-rows` rows: load, select-by-status, apply_updates of 1 000 rows, persist, for
   Parquet and CSV (and one openeo-manager-style persist of one row, which rewrites the file);
   bench/jobdb_scale.py, which also runs alone.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.jobdb_scale import db_table, run_db_bench  # noqa: E402 - after the checkout is on sys.path

PASSWORD_ENV = "BENCH_OPENEO_PASSWORD"
DEFAULT_PREFECT_HOME = Path.home() / ".cache" / "openeo-prefect-bench" / "prefect"
SIM = dict(queue_time=0.1, run_time=0.3, create_latency=0.0, start_latency=0.0, asset_count=1, asset_size=1024, seed=5)
# (module, class or None, attribute, label): wrapped where present, so the old cycle
# (flows/run_loop/cycle.py functions, flows/slots.py) and the rebuilt one (Cycle, Dispatcher, JobStore,
# AccountSlots) both report their phases.
PHASES = [
    ("jobdb", "JobDatabase", "save", "JobDatabase.save"),
    ("flows.report.reporting", "ProgressReport", "update", "ProgressReport.update (background thread)"),
    # rebuilt cycle
    ("flows.run_loop.dispatcher", "Dispatcher", "collect", "Dispatcher.collect (waits for outcomes)"),
    ("flows.run_loop.cycle", "Cycle", "apply", "Cycle.apply (outcomes -> store)"),
    ("flows.run_loop.cycle", "Cycle", "decide", "Cycle.decide (scheduler + ledger claim)"),
    ("flows.run_loop.cycle", None, "plan_cycle", "plan_cycle (scheduler)"),
    ("tasks.accounts.slots", "AccountSlots", "claim", "AccountSlots.claim"),
    ("jobdb.sql.slots", "SqlAccountSlots", "claim", "SqlAccountSlots.claim"),
    ("flows.run_loop.cycle", "Cycle", "dispatch", "Cycle.dispatch (submit task runs)"),
    ("jobdb.store", "JobStore", "snapshot", "JobStore.snapshot"),
    ("jobdb.store", "JobStore", "apply", "JobStore.apply"),
    ("jobdb.store", "JobStore", "persist", "JobStore.persist"),
    ("jobdb.sql.store", "SqlJobStore", "snapshot", "SqlJobStore.snapshot"),
    ("jobdb.sql.store", "SqlJobStore", "apply", "SqlJobStore.apply"),
    ("jobdb.sql.store", "SqlJobStore", "persist", "SqlJobStore.persist"),
    # cycle before the rebuild
    *[("flows.run_loop.cycle", None, name, name) for name in (
        "collect_starts", "collect_polls", "submit_polls", "reconcile", "claim_rows", "collect_finishers",
        "log_histogram", "submit_finishers", "wait_for_progress")],
    *[("flows.slots", "JobSlots", name, f"JobSlots.{name}") for name in ("sync", "grant", "bind")],
]


# ---------------------------------------------------------------------------------- child: flow
class Timer:
    def __init__(self):
        self.total: Dict[str, float] = defaultdict(float)
        self.count: Dict[str, int] = defaultdict(int)
        self.max: Dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, label: Optional[str] = None) -> None:
        original, label = getattr(owner, name), label or name

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                d = time.perf_counter() - t
                self.total[label] += d
                self.count[label] += 1
                self.max[label] = max(self.max[label], d)

        setattr(owner, name, timed)

    def summary(self) -> Dict[str, Dict[str, float]]:
        return {k: {"total_s": round(v, 3), "calls": self.count[k], "mean_ms": round(1000 * v / self.count[k], 2),
                    "max_ms": round(1000 * self.max[k], 1)} for k, v in sorted(self.total.items(), key=lambda kv: -kv[1])}


def child_flow(spec: Dict[str, Any], out: Path) -> None:
    sys.path.insert(0, spec.get("root") or str(ROOT))  # the checkout under test (--root)
    import pandas as pd

    from jobdb import JobDatabase

    os.environ[PASSWORD_ENV] = spec["password"]
    workdir = Path(spec["workdir"])
    n = spec["rows"]
    db_path = workdir / "jobs.parquet"
    rows = pd.DataFrame({"tile_id": [f"T{i:06d}" for i in range(n)], "year": [2020 + i % 4 for i in range(n)]})
    store = {}
    if spec.get("store_url"):
        from jobdb.sql.campaign import SqlDatabase

        SqlDatabase.open(spec["store_url"], create=True).create_campaign("bench", rows)
        store = {"job_db": spec["store_url"], "campaign": "bench"}
    else:
        JobDatabase.create(db_path, rows)
        store = {"job_db": str(db_path)}
    import importlib

    import flows.run_jobs as rj

    if spec.get("without_job_events") and hasattr(rj, "emit_job_event"):
        rj.emit_job_event = lambda *args, **kwargs: None  # diagnostic: what the per-change events cost
    if spec.get("without_tags") and hasattr(rj, "task_tags"):
        rj.task_tags = lambda *args: ()  # diagnostic: what the tags (no limit on them) cost
    timer = Timer()
    for module_name, class_name, attribute, label in PHASES:
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            continue
        owner = getattr(owner, class_name, None) if class_name else owner
        if owner is not None and hasattr(owner, attribute):
            timer.wrap(owner, attribute, label)
    backends = [{"name": b["name"], "url": b["url"], "parallel_jobs": b["parallel_jobs"],
                 "auth": {"type": "basic", "username": "scale", "password_env": PASSWORD_ENV}} for b in spec["backends"]]
    result: Dict[str, Any] = {}
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()  # this thread only: the flow's own thread (the cycle)
        profiler.enable()
    t0 = time.time()
    try:
        state = rj.run_jobs(**store, backends=backends, start_job="flows.tiling.demo_callbacks:start_job",
                            max_start_workers=spec["start_workers"], poll_interval_seconds=1.0,
                            download_results=spec["download"], root_dir=str(workdir / "results"), return_state=True)
        t1 = time.time()
        stats = state.result(raise_on_failure=False)
        stats = getattr(stats, "stats", stats)  # a Failed/Cancelled run carries its stats on the exception
        result.update(ok=True, stats=stats, flow_run_id=str(state.state_details.flow_run_id))
    except BaseException as exc:  # noqa: BLE001
        import traceback

        t1 = time.time()
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).sort_stats("tottime")
        stats.print_stats(40)
        stats.print_callers(8)  # who calls the 8 most expensive functions
        Path(spec["profile"]).write_text(text.getvalue())
    result.update(call_start=t0, call_end=t1, timings=timer.summary())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(ru_maxrss_kb=usage.ru_maxrss, cpu_s=round(usage.ru_utime + usage.ru_stime, 2))
    out.write_text(json.dumps(result, default=str))
    if result.get("flow_run_id"):
        submitted = sum(v for k, v in (result.get("stats") or {}).items() if k.endswith("_tasks") and k != "crashed_tasks")
        result["task_runs"] = count_task_runs(result["flow_run_id"], spec.get("settle_seconds", 60), submitted)
        out.write_text(json.dumps(result, default=str))


def count_task_runs(flow_run_id: str, settle: float, expected: int = 0) -> Dict[str, Any]:
    """Task runs the Prefect server holds for the flow run, by state type: polled every 2 s until
    `expected` are final or `settle` s have passed (the server may still be ingesting events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, \
        TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType

    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    counts: Dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        with get_client(sync_client=True) as client:
            def count(state_type: Optional[StateType] = None) -> int:
                task_filter = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[state_type]))) \
                    if state_type else None
                found = 0
                while True:
                    page = client.read_task_runs(flow_run_filter=flow_filter, task_run_filter=task_filter,
                                                 limit=200, offset=found)
                    found += len(page)
                    if len(page) < 200:
                        return found

            while True:
                counts = {"total": count()}
                for st in StateType:
                    c = count(st)
                    if c:
                        counts[st.value] = c
                final = sum(v for k, v in counts.items() if k in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
                counts["seconds_after_run"] = round(time.monotonic() - t0, 1)
                if final >= expected or time.monotonic() - t0 > settle:
                    return counts
                time.sleep(2.0)
    except Exception as exc:  # noqa: BLE001 - a figure, not the run
        counts["error"] = f"{type(exc).__name__}: {exc}"
    return counts


# --------------------------------------------------------------------------------- parent: flow
def proc_tree(pid: int) -> Dict[int, Dict[str, float]]:
    """{pid: {rss_kb, cpu_s, cmd}} for a process and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            out[p] = {"rss_kb": rss, "cpu_s": (int(fields[11]) + int(fields[12])) / tick, "cmd": cmd}
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError, StopIteration):
            continue
    return out


def run_flow_bench(args: argparse.Namespace) -> Dict[str, Any]:
    from simulator import SimulatorConfig, start_simulator

    sims = [start_simulator(SimulatorConfig(**SIM)) for _ in range(2)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    spec = {"rows": args.rows, "workdir": str(workdir), "password": sims[0].config.password, "root": args.root,
            "store_url": args.store_url,
            "without_job_events": args.without_job_events, "without_tags": args.without_tags, "profile": args.profile,
            "start_workers": args.start_workers, "download": not args.no_download,
            "backends": [{"name": f"b{i}", "url": s.url, "parallel_jobs": args.parallel_jobs} for i, s in enumerate(sims)]}
    (workdir / "spec.json").write_text(json.dumps(spec))
    out = workdir / "child_result.json"
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_HOME", str(DEFAULT_PREFECT_HOME))
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # 20 s fails on a loaded machine
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(workdir / "spec.json"), str(out)]
    print(f"[{time.strftime('%H:%M:%S')}] flow ({'PostgreSQL campaign' if args.store_url else 'Parquet file'}): "
          f"{args.rows} rows, 2 backends × {args.parallel_jobs} slots, "
          f"{args.start_workers} start workers, download={not args.no_download} ...", flush=True)
    log = open(workdir / "child.log", "wb")
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=args.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    peak = {"flow_rss_kb": 0, "tree_rss_kb": 0}
    last: Dict[int, Dict[str, float]] = {}
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            tree = proc_tree(proc.pid)
            last.update(tree)
            peak["tree_rss_kb"] = max(peak["tree_rss_kb"], sum(v["rss_kb"] for v in tree.values()))
            if proc.pid in tree:
                peak["flow_rss_kb"] = max(peak["flow_rss_kb"], tree[proc.pid]["rss_kb"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outcome = "ok"
    try:
        proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        outcome = "timeout"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done.set()
    sampler.join()
    log.close()
    counters = [s.counters() for s in sims]
    for s in sims:
        s.stop()
    result: Dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"ok": False}
    if outcome == "ok" and not result.get("ok"):
        outcome = "crashed"
    server_cpu = sum(v["cpu_s"] for p, v in last.items() if p != proc.pid and "uvicorn" in v["cmd"])
    n = args.rows
    rounds = math.ceil(n / (2 * args.parallel_jobs))
    ideal = rounds * (SIM["create_latency"] + SIM["start_latency"] + SIM["queue_time"] + SIM["run_time"])
    wall = (result["call_end"] - result["call_start"]) if result.get("call_start") else None
    stats = result.get("stats") or {}
    elapsed = stats.get("elapsed_seconds")
    timings = result.get("timings") or {}
    save = timings.get("JobDatabase.save") or timings.get("SqlJobStore.persist") or {}
    requests: Dict[str, int] = defaultdict(int)
    for c in counters:
        for k, v in c["requests"].items():
            requests[k] += v
    summary = {
        "outcome": outcome, "rows": n, "parallel_jobs_per_backend": args.parallel_jobs,
        "store": "postgresql" if args.store_url else "file",
        "load_before": load_before, "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "start_workers": args.start_workers, "download": not args.no_download,
        "process_wall_s": round(time.time() - t0, 1),
        "call_wall_s": round(wall, 1) if wall else None,
        "flow_elapsed_s": elapsed,
        "time_to_all_started_s": stats.get("time_to_all_started_seconds"),
        "ideal_s": round(ideal, 1),
        "overhead_per_job_ms": round(1000 * (elapsed - ideal) / n, 2) if elapsed else None,
        "flow_cpu_s": result.get("cpu_s"), "flow_cpu_per_job_ms": round(1000 * result["cpu_s"] / n, 2) if result.get("cpu_s") else None,
        "prefect_server_cpu_s": round(server_cpu, 1),
        "peak_rss_mb": round(result.get("ru_maxrss_kb", 0) / 1024, 1),
        "peak_rss_sampled_mb": round(peak["flow_rss_kb"] / 1024, 1),
        "peak_tree_rss_mb": round(peak["tree_rss_kb"] / 1024, 1),
        "persists": save.get("calls"), "persist_mean_ms": save.get("mean_ms"), "persist_max_ms": save.get("max_ms"),
        "persist_total_s": save.get("total_s"),
        "cycles": stats.get("cycles"),
        "task_runs_submitted": sum(v for k, v in stats.items() if k.endswith("_tasks") and k != "crashed_tasks"),
        "task_runs_by_kind": {k: v for k, v in stats.items() if k.endswith("_tasks")},
        "task_runs_on_server": result.get("task_runs"),
        "status": stats.get("status"),
        "jobs_total": sum(c["jobs_total"] for c in counters),
        "duplicates": sum(len(v) for c in counters for v in c["duplicate_titles"].values()),
        "requests": dict(requests),
        "phase_timings": result.get("timings"),
        "error": result.get("error"), "traceback": result.get("traceback"),
        "workdir": str(workdir),
    }
    if outcome != "ok":
        summary["log_tail"] = (workdir / "child.log").read_text(errors="replace")[-3000:]
    return summary


def flow_table(s: Dict[str, Any]) -> str:
    tr = s.get("task_runs_on_server") or {}
    rows = [
        ("outcome", s["outcome"]), ("rows", s["rows"]), ("status", s.get("status")),
        ("wall time of the flow call (s)", s["call_wall_s"]), ("flow elapsed_seconds (s)", s["flow_elapsed_s"]),
        ("time until all started (s)", s["time_to_all_started_s"]),
        ("ideal makespan ceil(N/400)·0.4 s (s)", s["ideal_s"]),
        ("flow overhead per job: (elapsed − ideal)/N (ms)", s["overhead_per_job_ms"]),
        ("flow process CPU (s) / per job (ms)", f"{s['flow_cpu_s']} / {s['flow_cpu_per_job_ms']}"),
        ("Prefect server CPU (s)", s["prefect_server_cpu_s"]),
        ("peak RSS flow process (MB)", s["peak_rss_mb"]),
        ("peak RSS flow + Prefect server (MB)", s["peak_tree_rss_mb"]),
        ("job-DB persists / mean / max (ms)", f"{s['persists']} / {s['persist_mean_ms']} / {s['persist_max_ms']}"),
        ("cycles", s["cycles"]),
        ("task runs submitted", f"{s['task_runs_submitted']} ({s['task_runs_by_kind']})"),
        ("task runs on the Prefect server, by state", tr),
        ("jobs created / duplicates", f"{s['jobs_total']} / {s['duplicates']}"),
        ("load average before / after", f"{s['load_before']} / {s['load_after']}"),
    ]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def phase_table(s: Dict[str, Any]) -> str:
    lines = ["| cycle phase | total s | calls | mean ms | max ms |", "|---|---|---|---|---|"]
    for k, v in (s.get("phase_timings") or {}).items():
        lines.append(f"| {k} | {v['total_s']} | {v['calls']} | {v['mean_ms']} | {v['max_ms']} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_flow(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="rows for the flow run")
    parser.add_argument("--parallel-jobs", type=int, default=200, help="job slots per backend")
    parser.add_argument("--start-workers", type=int, default=20, help="max_start_workers of the flow")
    parser.add_argument("--no-download", action="store_true", help="download_results=False")
    parser.add_argument("--db-rows", type=int, default=100_000, help="rows for the job DB benchmark")
    parser.add_argument("--skip-flow", action="store_true")
    parser.add_argument("--skip-db", action="store_true")
    parser.add_argument("--timeout", type=float, default=720, help="kill the flow run after this many seconds")
    parser.add_argument("--workdir", help="default: a temp dir")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--root", default=str(ROOT), help="checkout whose flow to run (e.g. an older commit)")
    parser.add_argument("--profile", help="diagnostic: cProfile the flow thread, top functions by own time to this file")
    parser.add_argument("--without-job-events", action="store_true",
                        help="diagnostic: the flow emits no Prefect event per job status change (patched out)")
    parser.add_argument("--without-tags", action="store_true",
                        help="diagnostic: task runs carry no tags (flows/config/limits.py task_tags patched out)")
    parser.add_argument("--store", choices=("file", "postgresql"), default="file",
                        help="the flow's job DB: a Parquet file, or a PostgreSQL campaign")
    parser.add_argument("--store-url", help="with --store postgresql: an empty database to use (default: a private "
                                            "cluster, started and stopped here)")
    args = parser.parse_args(argv)
    cluster = None
    if args.store == "postgresql" and not args.store_url and not args.skip_flow:
        from tests.postgres import PostgresCluster, find_bin_dir

        cluster = PostgresCluster(find_bin_dir()).start()
        args.store_url = cluster.database("bench_scale")
    try:
        return bench(args)
    finally:
        if cluster is not None:
            cluster.stop()


def bench(args: argparse.Namespace) -> int:
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report: Dict[str, Any] = {"simulator": SIM}
    if not args.skip_db:
        report["job_db"] = run_db_bench(args.db_rows, Path(args.workdir))
        print("\n" + db_table(report["job_db"]) + "\n", flush=True)
    if not args.skip_flow:
        report["flow"] = run_flow_bench(args)
        print("\n" + flow_table(report["flow"]) + "\n\n" + phase_table(report["flow"]), flush=True)
        if report["flow"].get("error"):
            print("\nerror:", report["flow"]["error"], report["flow"].get("log_tail", "")[-1500:])
    report["total_seconds"] = round(time.time() - t0, 1)
    print(f"\ntotal {report['total_seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
