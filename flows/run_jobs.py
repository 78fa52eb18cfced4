"""The run-jobs flow: drive every row of a job DB through an openEO batch job.

Fan-out/fan-in: the flow alone owns the job DB. It validates and connects before any job is
created (`prepare`), takes the DB's lock, runs the cycle (flows/cycle.py) with job slots shared
with other runs of the same accounts (accounts/slots.py), then reports. Its final state says
how the run went: Completed, Failed (more failed rows than `failure_threshold` allows) or
Cancelled (interrupted: run the same command again to resume).
"""
from __future__ import annotations

if __name__ == "__main__":  # check the input before Prefect is imported; and import this module only once
    import sys

    from flows.cli import main

    sys.exit(main())

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Optional, Union

from prefect import flow, get_run_logger
from prefect.states import Cancelled, Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from accounts.slots import AccountSlots
from flows.background import BackgroundPublisher
from flows.blocks import resolve_backend
from flows.cycle import Cycle, CycleEnd, CycleOptions
from flows.interrupts import StopSignal, catch_interrupts
from flows.dispatcher import Dispatcher
from flows.events import JobEvents
from flows.params import BackendConfig, ProcessCreatorConfig, SetupError
from flows.progress_display import current_display
from flows.reporting import ProgressReport, failed_rows, merge_request_counts, publish_final_artifacts
from flows.scheduler import BackendPolicy
from flows.setup import (
    check_process_parameters,
    check_row_backends,
    check_unique_names,
    connect_backend,
    load_start_job,
    make_process_creator,
)
from flows.tile_map import write_tile_map
from jobdb import JobDbError, JobDbLocked
from jobdb.status import FAILED, HOLDS_SLOT
from jobdb.store import JobStore
from tasks.connections import ManagedConnection, connection_key, register_connection, unregister_connection
from tasks.callables import load_hook

# Polls, reconciles, downloads and error logs run on the flow's task runner with this many threads.
FLOW_TASK_WORKERS = 8
# Renew basic/OIDC access tokens this often, before they expire (expired ones are renewed on 403 too).
TOKEN_REFRESH_SECONDS = 30 * 60.0


class RunEnded(Exception):
    """A run that did not complete; `stats` says how far it went."""

    def __init__(self, message: str, stats: Dict[str, Any]):
        super().__init__(message)
        self.stats = stats


class RunFailed(RunEnded):
    """The run ended Failed: more rows failed than `failure_threshold` allows."""


class RunInterrupted(RunEnded):
    """The run was interrupted (Ctrl-C / SIGTERM); the same call resumes it."""


@dataclass
class PreparedRun:
    store: JobStore
    backends: Dict[str, BackendConfig]
    connections: Dict[str, ManagedConnection]
    creator: Callable[..., Any]
    root_dir: Path
    hooks: Dict[str, str]  # "done" / "error" -> import path


@flow(name="run-jobs", task_runner=ThreadPoolTaskRunner(max_workers=FLOW_TASK_WORKERS), log_prints=True)
def run_jobs(
    job_db: Annotated[str, Field(description="Path of the job DB (.csv, .parquet, .geoparquet)")],
    backends: Annotated[
        List[Union[BackendConfig, str]],
        Field(min_length=1, description="openEO backends: inline configs, or names of OpenEOBackend blocks"),
    ],
    start_job: Annotated[
        Optional[Union[str, Callable[..., Any]]],
        Field(description="Import path 'package.module:function' of an openeo-style start_job callback"),
    ] = None,
    process: Annotated[
        Optional[ProcessCreatorConfig], Field(description="Create jobs from a user-defined process instead")
    ] = None,
    max_start_workers: Annotated[int, Field(ge=1, le=100, description="Start tasks running at once")] = 5,
    poll_interval_seconds: Annotated[float, Field(gt=0, description="Seconds between status polls")] = 10.0,
    download_results: Annotated[bool, Field(description="Download results of finished jobs")] = True,
    root_dir: Annotated[
        Optional[str], Field(description="Where job_<id>/ result folders go (default: beside the job DB)")
    ] = None,
    cancel_running_job_after: Annotated[
        Optional[float], Field(gt=0, description="Cancel jobs running longer than this many seconds")
    ] = None,
    max_runtime_minutes: Annotated[
        Optional[float],
        Field(gt=0, description="Bounded pass: start nothing new after this many minutes, finish what runs in "
                                "this process, persist and end; the next run goes on (for schedules)"),
    ] = None,
    failure_threshold: Annotated[
        float, Field(ge=0, le=1, description="Share of rows that may end error/start_failed/canceled before the "
                                             "run ends Failed (0: any failure fails the run; 0.05: 5 %)"),
    ] = 0.0,
    wait_for_lock: Annotated[
        bool, Field(description="If another run holds the job DB, wait for it instead of failing at once")
    ] = False,
    max_attempts: Annotated[
        int, Field(ge=1, le=20, description="Jobs a row may use: a row whose job ends in error is resubmitted "
                                            "as a new job until it has used them (1: no resubmission)"),
    ] = 1,
    on_job_done: Annotated[
        Optional[str], Field(description="Import path of a hook (job_id, row, job_dir, connection) run as its own "
                                         "task after a finished job's results are downloaded"),
    ] = None,
    on_job_error: Annotated[
        Optional[str], Field(description="Import path of a hook (job_id, row, job_dir, connection) run after a "
                                         "failed job's error logs are saved"),
    ] = None,
) -> State:
    """Create, start, poll and download one openEO batch job per job DB row until all are done."""
    logger = get_run_logger()
    t0 = time.monotonic()
    run = prepare(job_db, backends, start_job, process, root_dir, {"done": on_job_done, "error": on_job_error})
    flow_run_id = current_flow_run_id()

    def tell_waiting(exc: JobDbLocked) -> None:
        logger.warning("%s; waiting for it (wait_for_lock)", exc.describe().split("; wait")[0])

    run.store.lock.acquire(flow_run_id, wait_seconds=float("inf") if wait_for_lock else 0.0, on_wait=tell_waiting)
    try:
        run.store.reload()  # as the lock's last holder left it (prepare read it before the lock was ours)
        end, stats = drive(run, logger, flow_run_id, t0, max_start_workers, poll_interval_seconds, download_results,
                           cancel_running_job_after, max_runtime_minutes, max_attempts)
    finally:
        run.store.persist(force=True)
        run.store.lock.release()
    return final_state(run, end, stats, failure_threshold, logger)


def drive(
    run: PreparedRun, logger, flow_run_id: Optional[str], t0: float, max_start_workers: int, poll_interval: float,
    download: bool, cancel_after: Optional[float], max_runtime_minutes: Optional[float], max_attempts: int = 1,
) -> tuple[CycleEnd, Dict[str, Any]]:
    run_key = uuid.uuid4().hex[:12]
    keys = {name: connection_key(run_key, name) for name in run.backends}
    for name, connection in run.connections.items():
        register_connection(keys[name], connection)
    slots = AccountSlots({n: c.account for n, c in run.connections.items()}, run_key,
                         note={"flow_run_id": flow_run_id, "job_db": str(run.store.path)},
                         limits={n: b.parallel_jobs for n, b in run.backends.items()})
    publisher = BackgroundPublisher(logger)
    progress = publisher.call(lambda: ProgressReport(run.store.path))
    display = current_display(logger)

    def on_progress(snapshot) -> None:
        display.waiting_for_slots(slots.waiting_by_backend())
        display.update(run.store.status_by_backend(), snapshot.rows, time.monotonic() - t0)
        publisher.submit("progress", lambda: progress.result().update(run.store.dataframe()))

    stop = StopSignal()
    options = CycleOptions(
        poll_interval=poll_interval, download=download, cancel_after=cancel_after,
        deadline=t0 + 60.0 * max_runtime_minutes if max_runtime_minutes else None,
        hooks=frozenset(run.hooks), max_attempts=max_attempts,
    )
    run.store.track_hooks = bool(run.hooks)
    run.store.track_retries = max_attempts > 1

    events = JobEvents(publisher, str(run.store.path))

    def on_change(row: int, old: str, new: str) -> None:
        events.changed(new, run.store.value(row, "id"), run.store.value(row, "backend_name") or "", row,
                       run.store.label(row))

    policies = {n: BackendPolicy(b.parallel_jobs, b.max_parallel_starts) for n, b in run.backends.items()}
    run.store.retry_failed_downloads()
    try:
        with ThreadPoolTaskRunner(max_workers=max_start_workers) as start_runner, catch_interrupts(stop):
            dispatcher = Dispatcher(keys, run.creator, str(run.root_dir), start_runner, max_start_workers,
                                    FLOW_TASK_WORKERS, run.store.row, run.store.label, TOKEN_REFRESH_SECONDS,
                                    hooks=run.hooks)
            cycle = Cycle(run.store, policies, dispatcher, options, logger, slots=slots, stop=stop,
                          on_progress=on_progress, on_change=on_change)
            try:
                end = cycle.run()
            finally:
                display.close()
                run.store.persist(force=True)
                dispatcher.stop()
                dispatcher.close()
    finally:
        slots.close()
        for key in keys.values():
            unregister_connection(key)
    stats = build_stats(run, end, dispatcher.counters, t0)
    stats["tile_map"] = write_tile_map(run.store.dataframe(), run.store.path)
    publisher.call(lambda: publish_final_artifacts(run.store.path, run.store.dataframe(), stats,
                                                   failed_rows(run.store.dataframe())))
    publisher.close(timeout=15.0)
    return end, stats


def final_state(run: PreparedRun, end: CycleEnd, stats: Dict[str, Any], threshold: float, logger) -> State:
    counts = stats["status"]
    failed = sum(counts.get(s, 0) for s in FAILED)
    active = sum(counts.get(s, 0) for s in HOLDS_SLOT)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    if end.reason == "interrupted":
        message = (f"interrupted: {active} jobs still running on backends; "
                   "run the same command again to resume")
        logger.warning(message)
        return Cancelled(message=message, data=RunInterrupted(message, stats))
    if failed > threshold * stats["rows"]:
        message = f"{failed} of {stats['rows']} rows failed (allowed: {threshold:.0%}): {summary}"
        logger.error(message)
        return Failed(message=message, data=RunFailed(message, stats))
    left = stats["rows"] - stats["terminal"]
    if end.refused and left:
        refused = "; ".join(f"{name}: {why}" for name, why in end.refused.items())
        message = f"{left} rows left not_started: backends refused new jobs ({refused}); {summary}"
        logger.warning(message)
        return Completed(message=message, data=stats)
    if end.reason == "time_up" and left:
        message = f"time is up: {left} rows left for the next run ({summary})"
    else:
        message = f"run finished in {stats['elapsed_seconds']:.1f} s: {summary}"
    logger.info(message)
    return Completed(message=message, data=stats)


# --- setup ---------------------------------------------------------------------------------
def prepare(
    job_db: str,
    backends: List[Union[BackendConfig, str]],
    start_job: Optional[Union[str, Callable[..., Any]]],
    process: Optional[ProcessCreatorConfig],
    root_dir: Optional[str],
    hooks: Optional[Dict[str, Optional[str]]] = None,
) -> PreparedRun:
    """Validate everything and connect, before any job is created. Raises SetupError."""
    hooks = {kind: spec for kind, spec in (hooks or {}).items() if spec}
    for kind, spec in hooks.items():
        try:
            load_hook(spec)
        except ValueError as exc:
            raise SetupError(f"on_job_{kind}: {exc}", parameter=f"on_job_{kind}") from None
    configs = [resolve_backend(b) for b in backends]
    check_unique_names(configs)
    if (start_job is None) == (process is None):
        raise SetupError("give exactly one of start_job (an import path) or process (a process-based creator)",
                         parameter="start_job")
    creator = load_start_job(start_job) if start_job is not None else None
    try:
        store = JobStore.open(job_db)
    except JobDbError as exc:
        raise SetupError(str(exc), parameter="job_db") from exc
    snapshot_backends = {int(i): b for i, b in store.dataframe()["backend_name"].items() if isinstance(b, str) and b}
    check_row_backends(snapshot_backends, {b.name for b in configs})
    connections = {b.name: connect_backend(b) for b in configs}
    if process is not None:
        creator = make_process_creator(process)
        check_process_parameters(creator, process, next(iter(connections.values())), store.dataframe().columns)
    return PreparedRun(store, {b.name: b for b in configs}, connections, creator,
                       Path(root_dir) if root_dir else store.paths.default_results_root, hooks)


# --- results -------------------------------------------------------------------------------
def build_stats(run: PreparedRun, end: CycleEnd, counters: Dict[str, int], t0: float) -> Dict[str, Any]:
    snapshot = run.store.snapshot()
    requests_by_backend = {n: dict(c.request_counts) for n, c in run.connections.items()}
    return {
        "job_db": str(run.store.path),
        "rows": snapshot.rows,
        "terminal": snapshot.terminal,
        "status": dict(sorted(snapshot.counts.items())),
        "by_backend": run.store.status_by_backend(),
        "failures": failed_rows(run.store.dataframe())[:50],
        "ended": end.reason,
        "refused_backends": end.refused,
        "requests": requests_by_backend,
        "requests_by_route": merge_request_counts(requests_by_backend.values()),
        "requests_total": int(sum(sum(c.values()) for c in requests_by_backend.values())),
        "elapsed_seconds": round(time.monotonic() - t0, 3),
        "time_to_all_started_seconds": None if end.all_started_at is None else round(end.all_started_at, 3),
        "cycles": end.cycles,
        "persists": run.store.persist_count,
        **counters,
    }


def current_flow_run_id() -> Optional[str]:
    from prefect.runtime import flow_run

    return flow_run.id

