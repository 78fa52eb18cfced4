"""One compare.py scenario of our flow, in this process, with a timestamp at each step (issue 21).

    PYTHONPATH=. .venv/bin/python bench/trace.py out.json [SCENARIO]   # default: small

Wraps (at import, nothing in the flow changes) the poll task's listing, each create and start,
each download, the cycle's dispatch and apply, and the end of the run (STAC close, stats, tile
map, the publisher's last Prefect calls), and stores them with the simulator's job records
(created, started, ended), all in seconds after the first job was created. Prefect's ephemeral
server is started (by a throw-away flow) before the run, so its start is not in the figures.
Read the events with `bench/timeline.py` (the slot gaps and the tail) or by eye.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVENTS = []


def wrap(owner, attr, name, describe=None):
    original = getattr(owner, attr)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        details = describe(args) if describe else {}
        EVENTS.append((time.time(), name + ">", details))
        try:
            return original(*args, **kwargs)
        finally:
            EVENTS.append((time.time(), name + "<", details))

    setattr(owner, attr, timed)


def main() -> int:
    out, scenario_name = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "small")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import bench.compare as compare
    import flows.run_jobs as run_jobs_module
    import tasks.download
    import tasks.poll
    import tasks.start
    from flows.run_loop import background, cycle
    from prefect import flow
    from simulator import SimulatorConfig, start_simulator
    from tasks.results import run_results

    wrap(tasks.poll, "_poll", "poll", lambda a: {"jobs": len(a[2]), "backend": a[1]})
    wrap(tasks.start, "start_one", "start", lambda a: {"row": a[0]["_row"]})
    wrap(tasks.start, "create_one", "create", lambda a: {"row": a[0]["_row"]})
    wrap(tasks.download, "fetch_job_results", "download", lambda a: {"job": a[1]})
    wrap(run_jobs_module, "write_tile_map", "tile_map")
    wrap(run_jobs_module, "build_stats", "build_stats")
    wrap(run_results.RunResults, "close", "stac_close")
    wrap(background.BackgroundPublisher, "close", "publisher_close")
    # the end of the run after the publisher: the flow's own end, then Prefect's
    import prefect.flow_engine as flow_engine
    from jobdb.lock import JobDbLock
    from prefect.task_runners import ThreadPoolTaskRunner
    wrap(run_jobs_module, "drive", "drive")
    wrap(run_jobs_module, "final_state", "final_state")
    wrap(JobDbLock, "release", "lock_release")
    wrap(flow_engine.FlowRunEngine, "handle_success", "prefect_success")
    wrap(flow_engine, "propose_state_sync", "prefect_set_state")
    wrap(ThreadPoolTaskRunner, "__exit__", "task_runner_exit")
    from prefect.client.orchestration import PrefectClient
    increment = PrefectClient.increment_concurrency_slots_with_lease

    async def timed_increment(self, *args, **kwargs):
        EVENTS.append((time.time(), "slot_request>", {}))
        try:
            return await increment(self, *args, **kwargs)
        finally:
            EVENTS.append((time.time(), "slot_request<", {}))

    PrefectClient.increment_concurrency_slots_with_lease = timed_increment
    import prefect.concurrency._sync as prefect_slots
    wrap(prefect_slots, "acquire_concurrency_slots_with_lease", "tag_slots", lambda a: {"names": len(a[0])})
    from flows.rules import polling
    to_wall = time.time() - time.monotonic()  # the poll clock's monotonic times -> wall, like the events
    wrap(polling.PollClock, "job_ended", "clock_ended", lambda a: {
        "row": a[2], "estimate": a[0].estimate, "upper": a[0].upper, "exact": a[0].exact,
        "since_wall": (a[0].started.get(a[2]) or 0) + to_wall, "sent_wall": a[0].sent.get(a[1], 0) + to_wall})
    wrap(polling.PollClock, "job_started", "clock_started", lambda a: {
        "row": a[1], "now_wall": a[2] + to_wall, "answered_wall": a[3] if len(a) > 3 else None,
        "estimate": a[0].estimate})
    wrap(polling.PollClock, "poll_sent", "clock_sent", lambda a: {"backend": a[1], "at_wall": a[2] + to_wall})
    wrap(cycle.Cycle, "run", "cycle")
    wrap(cycle.Cycle, "dispatch", "dispatch", lambda a: {
        "starts": [o.row for o in a[1].starts], "polls": len(a[1].polls),
        "orders": [(o.backend, "start" if not o.creates else "slot" if o.then_start else "ahead") for o in a[1].starts],
        "polled": [p.backend for p in a[1].polls], "finishes": [o.row for o in a[1].finishes]})
    wrap(cycle.Cycle, "apply", "apply", lambda a: {"outcomes": [(o.step.value, sorted(o.rows)) for o in a[1]]})

    scenario = compare.SCENARIOS[scenario_name]
    sims = [start_simulator(SimulatorConfig(**scenario.sim_knobs())) for _ in scenario.parallel_jobs]
    work = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    os.environ["OPENEO_JOBS_STATE_DIR"] = str(work / "state")
    os.environ[compare.PASSWORD_ENV] = sims[0].config.password
    spec = {"n": scenario.n, "start_workers": scenario.start_workers, "workdir": str(work),
            "password": sims[0].config.password,
            "backends": [{"name": f"b{i}", "url": sim.url, "user": "ours-bench", "parallel_jobs": p,
                          "options": dict(scenario.client)}
                         for i, (sim, p) in enumerate(zip(sims, scenario.parallel_jobs))]}
    flow(lambda: None, name="warm-up")()  # the ephemeral server's start is not in the trace
    try:
        call_start, call_end, _ = compare.run_ours(spec, work)
        timeline = compare.sim_timeline(sims)
    finally:
        for sim in sims:
            sim.stop()
    first = timeline["first_create"]
    row = {"scenario": scenario.name, "tool": "ours", "outcome": "ok", "p": scenario.p,
           "ideal_makespan": scenario.ideal()["makespan"],
           "running_cap": scenario.sim_knobs().get("max_running_per_user"), "makespan_s": round(call_end - first, 2),
           "job_timeline": timeline["jobs"],
           "events": [(round(t - first, 3), name, details) for t, name, details in EVENTS]}
    Path(out).write_text(json.dumps({"rows": [row]}, default=str, indent=0))
    print(f"makespan {row['makespan_s']} s (ideal {row['ideal_makespan']} s); {len(EVENTS)} events in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
