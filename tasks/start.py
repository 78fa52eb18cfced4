"""The start-job task: create (through the user's callback) and start one openEO batch job."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from jobdb import utc_now
from tasks.connections import get_connection
from tasks.faults import Backoff, BackendUnavailable, JobLimitReached, RateLimited, classify
from tasks.openeo_calls import find_job_by_marker, start_job_carefully

log = logging.getLogger(__name__)

# How long one start task may keep waiting on rate limits/outages before it hands the row back.
DEFAULT_START_DEADLINE_SECONDS = 600.0


def row_as_series(row: Dict[str, Any]) -> pd.Series:
    """The row as openeo's callbacks expect it: a Series named by its index."""
    values = {k: v for k, v in row.items() if k != "_row"}
    return pd.Series(values, name=row.get("_row"), dtype=object)


def _result(row: Dict[str, Any], status: str, **fields: Any) -> Dict[str, Any]:
    return {"_row": row["_row"], "status": status, **fields}


@task(
    name="start-job",
    task_run_name="start-{label}",
    retries=0,  # retried inside: a Prefect retry delay would keep holding the backend's tag slot
    cache_policy=NO_CACHE,
)
def start_job(
    row: Dict[str, Any],
    backend: str,
    creator: Callable[..., Any],
    marker: str,
    label: str,
    job_id: Optional[str] = None,
    deadline_seconds: float = DEFAULT_START_DEADLINE_SECONDS,
) -> Dict[str, Any]:
    """Create the row's job (unless `job_id` is given: an adopted job) and start it.

    Never raises for a row-level problem: returns the row's new status and fields instead.
    Status "not_started" / "created" hand the row back to the flow for a later attempt.
    """
    return start_one(row, backend, creator, marker, job_id, deadline_seconds)


@task(name="start-jobs-batch", task_run_name="start-{label}", retries=0, cache_policy=NO_CACHE)
def start_jobs_batch(
    rows: List[Dict[str, Any]],
    backend: str,
    creator: Callable[..., Any],
    label: str,
    deadline_seconds: float = DEFAULT_START_DEADLINE_SECONDS,
) -> List[Dict[str, Any]]:
    """Start several rows one after the other (each row dict carries `job_marker`, and `job_id`
    for a job that exists already). Used when thousands of rows wait: one task run per row
    floods Prefect's server with events (bench/README.md). A row whose start raised comes back
    as {"_row": i, "crashed": message}: the flow then looks for its job by marker."""
    results = []
    for row in rows:
        try:
            plain = {k: v for k, v in row.items() if k != "job_id"}  # the callback sees DB columns only
            results.append(start_one(plain, backend, creator, row["job_marker"], row.get("job_id"), deadline_seconds))
        except Exception as exc:  # noqa: BLE001 - one row must not sink the batch
            results.append({"_row": row["_row"], "crashed": f"{type(exc).__name__}: {exc}"})
    return results


def start_one(
    row: Dict[str, Any],
    backend: str,
    creator: Callable[..., Any],
    marker: str,
    job_id: Optional[str],
    deadline_seconds: float,
) -> Dict[str, Any]:
    """The work of one start task (see `start_job`)."""
    deadline = time.monotonic() + deadline_seconds
    connection = get_connection(backend)
    base = {"backend_name": backend, "job_marker": marker}
    if job_id is None:
        created = _create(row, backend, creator, marker, deadline)
        if created["status"] != "created":
            return _result(row, **{**base, **created})
        job_id = created["id"]
        if created.get("started_by_callback"):
            return _result(row, "queued", id=job_id, start_time=utc_now(), error_message=None, **base)
    try:
        status = start_job_carefully(connection, job_id, deadline)
    except Exception as exc:  # noqa: BLE001 - a start refused for this job only
        log.warning("start of job %s (row %s) failed: %s", job_id, row["_row"], exc)
        return _result(row, "start_failed", id=job_id, error_message=f"start failed: {exc}", **base)
    fields = {"id": job_id, **base}
    if status != "created":
        fields.update(start_time=utc_now(), error_message=None)
    return _result(row, status, **fields)


def _create(row: Dict[str, Any], backend: str, creator: Callable[..., Any], marker: str, deadline: float) -> dict:
    """Run the user's callback until it created a job, exactly once per marker."""
    connection = get_connection(backend)
    backoff = Backoff()
    while True:
        with connection.call_context(marker) as tracking:
            try:
                job = creator(
                    row=row_as_series(row),
                    connection=connection,
                    provider=backend,
                    connection_provider=get_connection,
                )
            except Exception as exc:  # noqa: BLE001 - user code: anything can happen
                job, error = None, exc
            else:
                error = None
        if tracking.created_job_ids:
            # The job exists even if the callback failed after creating it (e.g. on its own start).
            job_id = tracking.created_job_ids[-1]
            return {"status": "created", "id": job_id, "started_by_callback": job_id in tracking.started_job_ids}
        if error is None:
            if job is None:
                return {"status": "skipped", "error_message": None}
            return {"status": "created", "id": job.job_id, "started_by_callback": job.job_id in tracking.started_job_ids}

        kind = classify(error)
        if isinstance(kind, BackendUnavailable):
            # The backend may have created the job and lost the answer: look before creating again.
            try:
                existing = find_job_by_marker(connection, marker)
            except Exception as exc:  # noqa: BLE001
                existing, kind = None, classify(exc)
            if existing is not None:
                log.info("adopted job %s for row %s after a lost response", existing["id"], row["_row"])
                return {"status": "created", "id": existing["id"], "started_by_callback": False}
        if isinstance(kind, (RateLimited, BackendUnavailable)):
            delay_hint = kind.retry_after if isinstance(kind, RateLimited) else None
            delay = backoff.next_delay(delay_hint)
            if time.monotonic() + delay > deadline:
                return {"status": "not_started", "error_message": f"gave up for now: {kind}"}
            log.info("creating job for row %s: %s; retrying in %.1f s", row["_row"], kind, delay)
            time.sleep(delay)
            continue
        if isinstance(kind, JobLimitReached):
            return {"status": "not_started", "error_message": str(kind)}
        log.warning("start_job callback failed for row %s: %r", row["_row"], error)
        return {"status": "start_failed", "error_message": f"{type(error).__name__}: {error}"}
