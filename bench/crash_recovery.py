"""Crash recovery, the long version: SIGKILL the run-jobs flow N times at seeded random moments.

    .venv/bin/python bench/crash_recovery.py --kills 20 [--cli]

Each round runs the flow in a child process against the same job DB (resuming the previous
round), kills it a random delay after it has made progress, and records what it was doing.
By default the children run `run_jobs(...)` against one temporary Prefect server; with `--cli`
each child is the command line in embedded mode (`python -m flows.run_jobs ...`, its own
Prefect server under a watchdog, one PREFECT_HOME for all rounds), and after the rounds no
process may be left using that PREFECT_HOME. A last run resumes to the end (in-process); then
every row must be terminal, no job created twice, and every finished job's results complete on
disk. Loopback only. Prints a table per round and the final check.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="child runs to kill (default 20)")
    parser.add_argument("--rows", type=int, default=None, help="job DB rows (default 4 per kill + 8)")
    parser.add_argument("--parallel-jobs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--min-delay", type=float, default=0.1, help="seconds after progress before the kill")
    parser.add_argument("--max-delay", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory and child logs")
    parser.add_argument("--cli", action="store_true", help="kill the command line in embedded mode (own server)")
    args = parser.parse_args(argv)
    rows = args.rows or 4 * args.kills + 8

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.run_jobs import run_jobs
    from simulator import start_simulator
    from tests.crash_helpers import check_recovered, kill_rounds, table
    from tests.flow_helpers import backend, fast_config, make_db
    from tests.test_crash_recovery import wait_until_gone

    work = Path(tempfile.mkdtemp(prefix="crash-recovery-"))
    asset_size = 1 << 20
    print(f"seed {args.seed}, {rows} rows, {args.kills} kills, work dir {work}", flush=True)
    t0 = time.monotonic()
    with prefect_test_harness(server_startup_timeout=120):
        sim = start_simulator(fast_config(create_latency=0.15, start_latency=0.15, queue_time=0.1, run_time=0.6,
                                          asset_size=asset_size, asset_count=2, seed=args.seed))
        try:
            db = make_db(work / "jobs.parquet", rows)
            kwargs = dict(job_db=str(db), backends=[backend("a", sim, args.parallel_jobs)],
                          start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.25)
            if args.cli:
                home = work / "prefect-home"
                env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
                env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
            else:
                env = {"PREFECT_API_URL": PREFECT_API_URL.value()}
            records = kill_rounds(sim, kwargs, kills=args.kills, seed=args.seed, min_delay=args.min_delay,
                                  max_delay=args.max_delay, env=env, log_dir=work if args.keep else None,
                                  timeout=120 if args.cli else 60, cli=args.cli)
            print(table(records))
            phases = Counter(p.split("(")[0] for r in records if r["outcome"] == "killed" for p in r["left_on_disk"].split("+"))
            print("kills that landed while rows were in each phase:", dict(phases))
            if args.cli:
                leftovers = wait_until_gone(home)
                print(f"processes left using the killed CLIs' PREFECT_HOME: {leftovers or 'none'}")
                if leftovers:
                    return 1
            t_resume = time.monotonic()
            stats = run_jobs(**kwargs)
            try:
                summary = check_recovered(sim, db, work, asset_size=asset_size, asset_count=2)
            except AssertionError as exc:
                print(f"FAILED after the final resume: {exc}")
                return 1
            print(f"after the final resume ({time.monotonic() - t_resume:.1f} s, all started after "
                  f"{stats['time_to_all_started_seconds']} s): {summary}; statuses {stats['status']}")
        finally:
            sim.stop()
    killed = sum(r["outcome"] == "killed" for r in records)
    print(f"OK: {killed} kills, every row terminal, no duplicate job, results complete "
          f"({time.monotonic() - t0:.0f} s)")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
