"""Command line for local runs: `python -m flows.run_jobs ...` and `python -m flows.run_jobs --demo`."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from flows.backend_spec import BACKEND_HELP, parse_backend

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.run_jobs",
        description="Run one openEO batch job per job DB row, as a Prefect flow.",
    )
    parser.add_argument("--demo", action="store_true", help="start the bundled simulator and run a small tile set")
    parser.add_argument("--job-db", help="job DB path (.csv, .parquet, .geoparquet)")
    parser.add_argument("--backend", action="append", type=parse_backend, default=[], help=BACKEND_HELP)
    parser.add_argument("--start-job", help="import path of a start_job callback, 'package.module:function'")
    parser.add_argument("--process-id", help="create jobs from this user-defined process instead")
    parser.add_argument("--namespace", help="namespace (URL) of --process-id")
    parser.add_argument("--parameter-defaults", type=json.loads, default={}, help="JSON object of process parameter defaults")
    parser.add_argument("--max-start-workers", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=10.0, help="seconds between status polls")
    parser.add_argument("--no-download", action="store_true", help="do not download results")
    parser.add_argument("--root-dir", help="where job_<id>/ result folders go (default: beside the job DB)")
    parser.add_argument("--cancel-running-job-after", type=float, help="seconds")
    parser.add_argument("--output-dir", default="demo-output", help="--demo: where the job DB and results go")
    parser.add_argument("--max-runtime-minutes", type=float,
                        help="bounded pass: start nothing new after this many minutes, then end (for schedules)")
    parser.add_argument("--failure-threshold", type=float,
                        help="share of rows that may fail before the run ends Failed (default 0)")
    parser.add_argument("--wait-for-lock", action="store_true",
                        help="if another run holds the job DB, wait for it instead of failing")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.demo:
        return run_demo(Path(args.output_dir))
    if not args.job_db or not args.backend:
        build_parser().error("--job-db and at least one --backend are required (or use --demo)")
    from flows.run_jobs import run_jobs

    process = None
    if args.process_id:
        process = {"process_id": args.process_id, "namespace": args.namespace, "parameter_defaults": args.parameter_defaults}
    optional = {k: v for k, v in dict(max_runtime_minutes=args.max_runtime_minutes,
                                       failure_threshold=args.failure_threshold).items() if v is not None}
    try:
        with prefect_api():
            state = run_jobs(
                job_db=args.job_db,
                backends=args.backend,
                start_job=args.start_job,
                process=process,
                max_start_workers=args.max_start_workers,
                poll_interval_seconds=args.poll_interval,
                download_results=not args.no_download,
                root_dir=args.root_dir,
                cancel_running_job_after=args.cancel_running_job_after,
                wait_for_lock=args.wait_for_lock,
                return_state=True,
                **optional,
            )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return report_outcome(state)


def report_outcome(state) -> int:
    """Print the run's outcome; exit code 0 completed, 1 failed, 130 interrupted."""
    outcome = state.result(raise_on_failure=False)
    stats = getattr(outcome, "stats", outcome if isinstance(outcome, dict) else None)
    if stats is not None:
        print(json.dumps(stats, indent=2, default=str))
    if state.is_cancelled():
        print(state.message, file=sys.stderr)
        return 130
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    print(state.message)
    return 0


@contextlib.contextmanager
def prefect_api():
    """A Prefect server for this run in its own session (flows/local_server.py), unless the user
    points PREFECT_API_URL at one: Ctrl-C then reaches only this process, which records the run's
    final state before it exits, and no server outlives the CLI."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from flows.local_server import local_prefect_server

    with local_prefect_server() as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # send the run's last logs while the server is still there


def run_demo(output_dir: Path) -> int:
    """Two simulated backends, a small tile grid x 2 years, the real flow; prints a summary."""
    import pandas as pd

    from flows.run_jobs import run_jobs
    from flows.tile_area import make_tile_grid
    from jobdb import JobDatabase
    from simulator import SimulatorConfig, start_simulator

    output_dir.mkdir(parents=True, exist_ok=True)
    job_db = output_dir / "jobs.parquet"
    if job_db.exists():
        job_db.unlink()  # the demo always starts afresh
    config = SimulatorConfig(queue_time=0.5, run_time=2.0, run_time_jitter=1.0, p_error=0.1, seed=1)
    with start_simulator(config) as sim_a, start_simulator(config) as sim_b:
        tiles = make_tile_grid(
            {"west": 5.0, "south": 51.0, "east": 5.25, "north": 51.1}, tile_size=10_000, years=[2023, 2024]
        )
        JobDatabase.create(job_db, tiles)
        os.environ.setdefault("DEMO_OPENEO_PASSWORD", config.password)
        auth = {"type": "basic", "username": "demo", "password_env": "DEMO_OPENEO_PASSWORD"}
        started = time.monotonic()
        stats = run_jobs(
            job_db=str(job_db),
            backends=[
                {"name": "sim-a", "url": sim_a.url, "parallel_jobs": 3, "auth": auth},
                {"name": "sim-b", "url": sim_b.url, "parallel_jobs": 3, "auth": auth},
            ],
            start_job="flows.demo_callbacks:start_job",
            poll_interval_seconds=1.0,
        )
        elapsed = time.monotonic() - started
    df = pd.read_parquet(job_db)
    print(f"\nDemo: {len(df)} jobs on 2 simulated backends in {elapsed:.1f} s")
    print(df[["tile_id", "year", "backend_name", "status", "id"]].to_string(index=False))
    print(f"\nstatuses: {stats['status']}; manager requests: {stats['requests_total']}; job DB: {job_db}")
    return 0 if stats["terminal"] == stats["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
