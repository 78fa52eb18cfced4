"""The run-jobs flow: drive every row of a job DB through an openEO batch job.

Fan-out/fan-in: the flow alone owns the job DB. This module validates and connects before
any job is created (`prepare`), runs the cycle (`flows/cycle.py`: collect what tasks returned,
poll each backend when due, record start intents, persist once, submit tasks), and reports.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, List, Optional, Union

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows import bookkeeping as bk
from flows.blocks import resolve_backend
from flows.cycle import FLOW_TASK_WORKERS, START_TAG_PREFIX, RunState, drive, str_or_none
from flows.params import BackendConfig, ProcessCreatorConfig, SetupError
from flows.reporting import (
    ProgressReport,
    merge_request_counts,
    publish_final_artifacts,
    status_by_backend,
    status_counts,
)
from flows.setup import (
    check_process_parameters,
    check_row_backends,
    check_unique_names,
    connect_backend,
    load_start_job,
    make_process_creator,
)
from flows.slots import JobSlots, lease_seconds_for
from flows.tile_map import write_tile_map
from jobdb import TERMINAL_STATUSES, JobDatabase, JobDbError
from tasks.connections import register_connection, unregister_connection


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
) -> Dict[str, Any]:
    """Create, start, poll and download one openEO batch job per job DB row until all are done."""
    logger = get_run_logger()
    t0 = time.monotonic()
    state = prepare(job_db, backends, start_job, process, root_dir)
    try:
        ensure_start_tag_limits(state.backends)
        state.slots = JobSlots(state.backends, lease_seconds_for(poll_interval_seconds), _flow_run_id(), job_db)
        progress = ProgressReport(Path(job_db).stem, f"Rows terminal in {job_db}")
        all_started_at = drive(state, max_start_workers, poll_interval_seconds, download_results,
                               cancel_running_job_after, progress, logger)
    finally:
        for name in state.connections:
            unregister_connection(name)
        if state.slots is not None:
            state.slots.close()
    stats = build_stats(state, job_db, t0, all_started_at)
    stats["tile_map"] = write_tile_map(state.db.df, job_db)
    stats["slot_leases"] = dict(state.slots.counters) if state.slots is not None else None
    publish_final_artifacts(Path(job_db).stem, state.db.df, stats, failures(state))
    logger.info("run finished in %.1f s: %s", stats["elapsed_seconds"], stats["status"])
    return stats


# --- setup ---------------------------------------------------------------------------------
def prepare(
    job_db: str,
    backends: List[BackendConfig],
    start_job: Optional[Union[str, Callable[..., Any]]],
    process: Optional[ProcessCreatorConfig],
    root_dir: Optional[str],
) -> RunState:
    """Validate everything and connect, before any job is created. Raises SetupError."""
    backends = [resolve_backend(b) for b in backends]
    check_unique_names(backends)
    if (start_job is None) == (process is None):
        raise SetupError("give exactly one of start_job (an import path) or process (a process-based creator)")
    creator = load_start_job(start_job) if start_job is not None else None
    try:
        db = JobDatabase.open(job_db)
    except JobDbError as exc:
        raise SetupError(str(exc)) from exc
    names = {b.name for b in backends}
    check_row_backends({int(i): str_or_none(v) for i, v in db.df["backend_name"].items()}, names)
    connections = {b.name: connect_backend(b) for b in backends}
    if process is not None:
        creator = make_process_creator(process)
        check_process_parameters(creator, process, next(iter(connections.values())), db.df.columns)
    for name, connection in connections.items():
        register_connection(name, connection)
    return RunState(
        db=db,
        backends={b.name: b for b in backends},
        connections=connections,
        creator=creator,
        root_dir=Path(root_dir) if root_dir else Path(job_db).resolve().parent,
        marker_prefix=bk.db_marker_prefix(job_db),
        needs_reconcile=set(db.df.index[db.df["status"] == "creating"].astype(int)),
        pinned=set(db.df.index[(db.df["status"] == "not_started") & db.df["backend_name"].notna()].astype(int)),
    )


def ensure_start_tag_limits(backends: Dict[str, BackendConfig]) -> None:
    """Create or update the tag concurrency limit on start tasks of backends that ask for one.

    It caps concurrent start requests per backend across every flow run on this Prefect server.
    Only where configured (`max_parallel_starts`): Prefect 3.8 takes a lease per limited task
    run, which measured ~1 s per start task here (20 jobs: 18-28 s instead of 4-5 s).
    """
    limited = [b for b in backends.values() if b.max_parallel_starts]
    if not limited:
        return
    with get_client(sync_client=True) as client:
        for backend in limited:
            client.create_concurrency_limit(
                tag=f"{START_TAG_PREFIX}{backend.name}", concurrency_limit=backend.max_parallel_starts
            )


# --- results -------------------------------------------------------------------------------
def failures(state: RunState) -> List[Dict[str, Any]]:
    df = state.db.df
    bad = df[df["status"].isin(["error", "start_failed", "canceled"])]
    return [
        {"_row": int(i), "label": bk.row_label({"_row": int(i), **{k: bad.at[i, k] for k in ("tile_id", "year", "title") if k in bad.columns}}),
         "id": str_or_none(bad.at[i, "id"]), "status": bad.at[i, "status"],
         "error_message": str_or_none(bad.at[i, "error_message"]) if "error_message" in bad.columns else None}
        for i in bad.index
    ]


def build_stats(state: RunState, job_db: str, t0: float, all_started_at: Optional[float]) -> Dict[str, Any]:
    df = state.db.df
    requests_by_backend = {n: dict(c.request_counts) for n, c in state.connections.items()}
    return {
        "job_db": str(job_db),
        "rows": int(len(df)),
        "terminal": int(df["status"].isin(TERMINAL_STATUSES).sum()),
        "status": status_counts(df),
        "by_backend": status_by_backend(df),
        "requests": requests_by_backend,
        "requests_by_route": merge_request_counts(requests_by_backend.values()),
        "requests_total": int(sum(sum(c.values()) for c in requests_by_backend.values())),
        "elapsed_seconds": round(time.monotonic() - t0, 3),
        "time_to_all_started_seconds": None if all_started_at is None else round(all_started_at, 3),
        **state.counters,
    }


def _flow_run_id() -> Optional[str]:
    from prefect.runtime import flow_run

    return flow_run.id


if __name__ == "__main__":
    import sys

    from flows.cli import main

    sys.exit(main())
