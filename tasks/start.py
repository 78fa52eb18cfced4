"""The create-job and start-job tasks: create (through the user's callback), and start, the jobs of
one or more rows; the flow runs them as separate steps (a job may be created ahead of its slot).

One task definition per step whatever the batch size: the dispatcher gives it one row while few rows move
and a batch when thousands do. Every row gets its own answer in the outcome (`Outcome.rows`):
  {"status": "queued", "id": ...}                   created and started (or started by the callback)
  {"status": "created", "id": ...}                  created (create-job): started when a slot frees
  {"status": "created", "id": ..., "handed_back"}   created; the backend refused to start it for now
  {"status": "not_started", "handed_back": why}     nothing created (rate limit, job limit, deadline, the run stopping)
  {"status": "not_started", "refused": why}         the account cannot pay (402): stop starting there
  {"status": "skipped"} / {"status": "start_failed", "error_message": why}
  {"status": "creating", "unanswered": why}        POST /jobs sent, no answer: the backend may still create
                                                    the job; the row stays `creating` and is looked up by
                                                    marker, created again only after a grace period
  {"crashed": why}                                  unknown whether a job exists: reconcile by marker
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Union

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from jobdb.schema import utc_now
from tasks.faults import Backoff, BackendUnavailable, JobLimitReached, RateLimited, classify
from tasks.openeo_calls import find_job_by_marker, is_refused_for_good, start_job_carefully
from tasks.outcome import Outcome, Step, deliver, pause, stopping
from tasks.retry_policy import POST_DEADLINE_SECONDS
from tasks.standalone import ConnectionSource, connection_for, provider_for
from jobdb.status import CREATED, CREATING, NOT_STARTED, QUEUED, SKIPPED, START_FAILED

log = logging.getLogger(__name__)

# How long one row may keep waiting on rate limits/outages before the task hands it back.
DEFAULT_START_DEADLINE_SECONDS = POST_DEADLINE_SECONDS
# Columns the flow adds to a row for the task; the callback sees the DB's own columns only.
TASK_FIELDS = ("_row", "job_marker", "job_id")


def row_as_series(row: Dict[str, Any]) -> pd.Series:
    """The row as openeo's callbacks expect it: a Series named by its index."""
    values = {k: v for k, v in row.items() if k not in TASK_FIELDS}
    return pd.Series(values, name=row.get("_row"), dtype=object)


@task(name="start-job", task_run_name="start-{label}", retries=0, cache_policy=NO_CACHE)
def start_jobs(
    rows: List[Dict[str, Any]],
    backend: str,
    connection_key: ConnectionSource,
    creator: Callable[..., Any],
    label: str,
    inbox: Optional[str] = None,
    deadline_seconds: float = DEFAULT_START_DEADLINE_SECONDS,
) -> Union[Outcome, State]:
    """Start each row's job, one row after the other (each dict carries `_row`, `job_marker` and,
    for a job created earlier, `job_id`; a row without one is created first).

    A row whose start failed (`start_failed`) makes the task run end `Failed`, with the outcome as
    the state's data. No Prefect retries: a POST is never repeated blindly; every retry here is decided per
    failure kind (tasks/openeo_calls.py), and a lost create is looked up by its marker first.
    """
    return each_row(Step.START, rows, backend, inbox, lambda row: start_one(
        row, backend, connection_key, creator, deadline_seconds, inbox))


@task(name="create-job", task_run_name="create-{label}", retries=0, cache_policy=NO_CACHE)
def create_jobs(
    rows: List[Dict[str, Any]],
    backend: str,
    connection_key: str,
    creator: Callable[..., Any],
    label: str,
    inbox: Optional[str] = None,
    deadline_seconds: float = DEFAULT_START_DEADLINE_SECONDS,
) -> Union[Outcome, State]:
    """Create each row's job through the user's callback, exactly once per marker, and leave it
    `created`: the flow starts it (`start_jobs`) when its backend has a free slot, so a slow create
    never holds a start worker and a job can be ready before its slot frees (create ahead)."""
    return each_row(Step.CREATE, rows, backend, inbox, lambda row: create_one(
        row, backend, connection_key, creator, deadline_seconds, inbox))


def each_row(step: Step, rows: List[Dict[str, Any]], backend: str, inbox: Optional[str],
             one: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Union[Outcome, State]:
    results: Dict[int, Dict[str, Any]] = {}
    # rows nothing was sent for (the run is stopping, the account cannot pay): one answer for all
    not_tried: Dict[int, Dict[str, Any]] = {}
    refused: Optional[str] = None
    for row in rows:
        i = int(row["_row"])
        if refused is not None:  # the account cannot pay: don't even try the rest of the batch
            # (answered with the others at the end: left out, the flow took them for crashed)
            not_tried[i] = {"status": CREATED, "id": row["job_id"], "handed_back": refused} if row.get("job_id") \
                else {"status": NOT_STARTED, "handed_back": refused}
            continue
        if not row.get("job_id") and stopping(inbox):
            # The run is stopping: no POST /jobs from here on (a batch went on creating for seconds
            # after the Ctrl-C at scale). Nothing was sent for this row: it goes back to not_started
            # (its intent, the marker, is dropped: no job can carry it). A job created earlier is
            # still started (a bounded pass whose time is up starts what it created).
            not_tried[i] = {"status": NOT_STARTED, "handed_back": "the run is stopping"}
            continue
        try:
            results[i] = one(row)
        except Exception as exc:  # noqa: BLE001 - one row must not sink the batch
            results[i] = {"crashed": f"{type(exc).__name__}: {exc}"}
        refused = results[i].get("refused") or refused
        # Each row's answer goes to the flow at once: a job created early in a batch is started
        # (or followed) while the batch goes on, not when its last row is done.
        deliver(inbox, Outcome(step, backend, {i: results[i]}))
    if not_tried:  # one envelope (a line each, hundreds of rows, was seconds of the stop's cycle)
        deliver(inbox, Outcome(step, backend, not_tried))
        results.update(not_tried)
    outcome = Outcome(step, backend, results)  # the task's result; the flow has every row already
    failed = [r for r in results.values() if r.get("status") == START_FAILED]
    if failed:
        # The task run ends Failed in the UI; the outcome reached the flow already (and is the
        # state's data), so the run goes on and records every row of the batch.
        first = failed[0].get("error_message") or "start failed"
        message = first if len(results) == 1 else f"{len(failed)} of {len(results)} rows start_failed; first: {first}"
        return Failed(message=message, data=outcome)
    return outcome


def create_one(
    row: Dict[str, Any], backend: str, connection_key: str, creator: Callable[..., Any], deadline_seconds: float,
    inbox: Optional[str] = None,
) -> Dict[str, Any]:
    created = _create(row, backend, connection_key, creator, time.monotonic() + deadline_seconds, inbox)
    if created["status"] != CREATED:
        return created
    answered = time.time()  # when the job existed at the latest (the poll clock reads the backend's times by it)
    if created.get("started_by_callback"):
        return {"status": QUEUED, "id": created["id"], "start_time": utc_now(), "error_message": None}
    return {"status": CREATED, "id": created["id"], "created_at": answered}


def start_one(
    row: Dict[str, Any], backend: str, connection_key: ConnectionSource, creator: Callable[..., Any], deadline_seconds: float,
    inbox: Optional[str] = None,
) -> Dict[str, Any]:
    deadline = time.monotonic() + deadline_seconds
    connection = connection_for(connection_key, backend)
    job_id = row.get("job_id")
    created_at = {}
    if job_id is None:  # created here first: what create-job answers, unless it is only `created`
        created = create_one(row, backend, connection_key, creator, deadline_seconds, inbox)
        if created["status"] != CREATED:
            return created
        job_id = created["id"]
        created_at = {"created_at": created["created_at"]}
    try:
        status = start_job_carefully(connection, job_id, deadline, sleep=lambda s: not pause(inbox, s))
    except Exception as exc:  # noqa: BLE001 - classified: a refusal for this job only, or for the account
        if is_refused_for_good(exc):
            return {"status": CREATED, "id": job_id, "handed_back": str(exc), "refused": str(exc)}
        log.warning("start of job %s (row %s) failed: %s", job_id, row["_row"], exc)
        return {"status": START_FAILED, "id": job_id, "error_message": f"start failed: {exc}"}
    if status == CREATED:
        return {"status": CREATED, "id": job_id, "handed_back": "the backend did not start it yet", **created_at}
    return {"status": status, "id": job_id, "start_time": utc_now(), "error_message": None,
            "started_at": time.time(), **created_at}


def _create(
    row: Dict[str, Any], backend: str, connection_key: ConnectionSource, creator: Callable[..., Any], deadline: float,
    inbox: Optional[str],
) -> Dict[str, Any]:
    """Run the user's callback until it created a job, exactly once per marker."""
    connection = connection_for(connection_key, backend)
    marker = row["job_marker"]
    backoff = Backoff()
    while True:
        with connection.call_context(marker) as tracking:
            try:
                job = creator(row=row_as_series(row), connection=connection, provider=backend,
                              connection_provider=provider_for(connection_key, backend))
            except Exception as exc:  # noqa: BLE001 - user code: anything can happen
                job, error = None, exc
            else:
                error = None
        if tracking.created_job_ids:
            # The job exists even if the callback failed after creating it (e.g. on its own start).
            job_id = tracking.created_job_ids[-1]
            return {"status": CREATED, "id": job_id, "started_by_callback": job_id in tracking.started_job_ids}
        if tracking.unanswered_creates:
            # Sent, no answer: the backend may still be working on it and create the job after any
            # look we take now. Creating again here could make a second job; the flow looks the job
            # up by marker and creates again only after a grace period (flows/rules/reconcile.py).
            why = tracking.unanswered_creates[-1]
            log.warning("creating job for row %s: POST /jobs got no answer (%s); its job is looked up by marker, "
                        "not created again for now", row["_row"], why)
            return {"status": CREATING, "unanswered": why}
        if error is None:
            if job is None:
                return {"status": SKIPPED, "error_message": None}
            return {"status": CREATED, "id": job.job_id, "started_by_callback": job.job_id in tracking.started_job_ids}
        if is_refused_for_good(error):
            return {"status": NOT_STARTED, "handed_back": str(error), "refused": str(error)}
        kind = classify(error)
        if isinstance(kind, BackendUnavailable):
            # The backend may have created the job and lost the answer: look before creating again.
            try:
                existing = find_job_by_marker(connection, marker)
            except Exception as exc:  # noqa: BLE001
                existing, kind = None, classify(exc)
            if existing is not None:
                log.info("adopted job %s for row %s after a lost response", existing["id"], row["_row"])
                return {"status": CREATED, "id": existing["id"], "started_by_callback": False}
        if isinstance(kind, (RateLimited, BackendUnavailable)):
            delay = backoff.next_delay(kind.retry_after if isinstance(kind, RateLimited) else None)
            if time.monotonic() + delay > deadline:
                return {"status": NOT_STARTED, "handed_back": f"gave up for now: {kind}"}
            log.info("creating job for row %s: %s; retrying in %.1f s", row["_row"], kind, delay)
            if pause(inbox, delay):
                return {"status": NOT_STARTED, "handed_back": "the run is stopping"}
            continue
        if isinstance(kind, JobLimitReached):
            return {"status": NOT_STARTED, "handed_back": str(kind)}
        log.warning("start_job callback failed for row %s: %r", row["_row"], error)
        return {"status": START_FAILED, "error_message": f"{type(error).__name__}: {error}"}
