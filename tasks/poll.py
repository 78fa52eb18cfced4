"""The poll task: statuses of all our active jobs on one backend, from one paged listing."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Collection, Dict, List, Optional, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from jobdb.status import BACKEND_ENDED, ERROR, from_backend
from tasks.connections import marker_tag
from tasks.faults import UnexpectedResponse, classify
from tasks.openeo_calls import cancel_job, describe_job, is_api_error, iter_job_listing, statuses_from_listing
from tasks.outcome import Outcome, Step, deliver, pause
from tasks.standalone import ConnectionSource, connection_for

log = logging.getLogger(__name__)

# Ended jobs a poll describes at once (their usage and costs), in threads of the poll task.
DESCRIBE_WORKERS = 4
# A listing entry's times (openEO job metadata fields, not statuses): when the job was made and
# when its status last changed (flows/rules/polling.py: running since).
LISTING_TIMES = ("created", "updated")


@task(
    name="poll-backend",
    task_run_name="poll-{backend}",
    retries=0,  # a failed poll is made again at the next cycle; its requests are retried (tasks/retry_policy.py)
    cache_policy=NO_CACHE,
)
def poll_backend(
    backend: str,
    connection_key: ConnectionSource,
    jobs: Dict[int, List[str]],
    cancel: Sequence[str] = (),
    inbox: Optional[str] = None,
    token_max_age_seconds: Optional[float] = None,
    not_before: Optional[float] = None,
) -> Outcome:
    """New statuses of the rows' jobs (`jobs`: {row: [job id, status we know]}).

    `not_before` (epoch seconds): the listing is made then, not earlier (the flow submits a poll
    a little ahead of its time, so Prefect's work before the body, a tag slot check among it, is
    not added to it); a run that stops meanwhile gets an empty outcome at once, with no request.

    One `GET /jobs` listing (paged, stopping once every job is found) gives the statuses;
    `GET /jobs/{id}` is only made for jobs the listing lacks, and once for each job that
    became terminal (its usage and costs). Jobs in `cancel` are canceled first. An access
    token older than `token_max_age_seconds` is renewed first (off the flow's thread).
    Outcome rows: {row: {"status": ..., "metadata": {...} (terminal only), "times": {"created", "updated"}
    (the listing's, other changes), "error": ...}}.
    """
    wait = 0.0 if not_before is None else not_before - time.time()
    if wait > 0 and pause(inbox, wait):
        return deliver(inbox, Outcome(Step.POLL, backend, {}))
    connection = connection_for(connection_key, backend)
    if token_max_age_seconds:
        connection.refresh_token_if_older(token_max_age_seconds)
    rows_by_job = {str(job_id): row for row, (job_id, _) in jobs.items()}
    changes = _poll(connection, backend, {str(job_id): status for job_id, status in jobs.values()}, cancel)
    return deliver(inbox, Outcome(Step.POLL, backend, {rows_by_job[j]: change for j, change in changes.items()}))


def _poll(connection, backend: str, active: Dict[str, str], cancel: Sequence[str]) -> Dict[str, dict]:
    for job_id in cancel:
        try:
            cancel_job(connection, job_id)
            log.info("canceled job %s on %s: ran longer than allowed", job_id, backend)
        except Exception as exc:  # noqa: BLE001 - retried next cycle
            log.warning("could not cancel job %s on %s: %s", job_id, backend, classify(exc))

    listed = statuses_from_listing(connection, active)
    updates: Dict[str, dict] = {}
    described: Dict[str, tuple] = {}  # job id -> (status we know, listed status): details wanted
    for job_id, known_status in active.items():
        entry = listed.get(job_id)
        listed_status = from_backend(entry.get("status")) if entry is not None else None
        if entry is not None and entry.get("status") and listed_status is None:
            log.warning("job %s on %s: status %r is not an openEO job status; asking again at the next poll",
                        job_id, backend, entry["status"])
            continue
        needs_details = entry is None or (listed_status in BACKEND_ENDED and listed_status != known_status)
        if not needs_details:
            if listed_status and listed_status != known_status:
                times = {k: entry[k] for k in LISTING_TIMES if entry.get(k)}  # when it changed (polling.py)
                updates[job_id] = {"status": listed_status, **({"times": times} if times else {})}
            continue
        described[job_id] = (known_status, listed_status)
    for job_id, (metadata, exc) in describe_all(connection, list(described)).items():
        known_status, listed_status = described[job_id]
        if exc is not None:  # one job's problem must not hide the others
            if is_api_error(exc, 404):
                updates[job_id] = {"status": ERROR, "error": f"job {job_id} no longer exists on {backend}"}
            elif isinstance(exc, UnexpectedResponse) and listed_status:
                # Its details are unusable, but the listing says how it ended: don't wait forever.
                log.warning("job %s on %s: %s; using its listed status %s", job_id, backend, exc, listed_status)
                updates[job_id] = {"status": listed_status, "error": str(exc)}
            else:
                log.warning("could not describe job %s on %s: %s", job_id, backend, classify(exc))
            continue
        status = from_backend(metadata["status"])
        if status is None:
            log.warning("job %s on %s: status %r is not an openEO job status; asking again at the next poll",
                        job_id, backend, metadata["status"])
        elif status != known_status or status in BACKEND_ENDED:
            updates[job_id] = {"status": status, "metadata": metadata}
    return updates


def describe_all(connection, job_ids: Sequence[str]) -> Dict[str, tuple]:
    """{job id: (its description, None) or (None, the exception)}, DESCRIBE_WORKERS at a time: a
    wave of jobs ending together is told to the flow (their slots freed) after one round trip or
    two, not one per job (the account's `max_concurrent_requests` still holds: tasks/accounts/pacing.py)."""
    def one(job_id: str) -> tuple:
        try:
            return describe_job(connection, job_id), None
        except Exception as exc:  # noqa: BLE001 - reported per job by the caller
            return None, exc

    if len(job_ids) <= 1:
        return {job_id: one(job_id) for job_id in job_ids}
    with ThreadPoolExecutor(max_workers=min(DESCRIBE_WORKERS, len(job_ids)), thread_name_prefix="describe") as pool:
        return dict(zip(job_ids, pool.map(one, job_ids)))


@task(name="find-marked-jobs", task_run_name="reconcile-{backend}", retries=0,  # made again at the next cycle
      cache_policy=NO_CACHE)
def find_marked_jobs(
    backend: str, connection_key: ConnectionSource, markers: Dict[str, int], inbox: Optional[str] = None,
    unsettled: Collection[int] = (),
) -> Outcome:
    """The jobs on `backend` whose title carries one of `markers` ({marker: row}).

    Used for rows recorded as `creating` with no task on them (a crash, a POST without an answer):
    such a row may or may not have its job on the backend; one listing answers that for all of
    them, so nothing is created twice. Outcome rows: {row: {"job": listing entry or None}}; a row
    in `unsettled` whose job is not found also gets `"may_still_come": True` (a POST of it may
    still be under way: not a reason to create another yet).
    """
    tags = {marker_tag(m): m for m in markers}
    found: Dict[str, dict] = {}
    for job in iter_job_listing(connection_for(connection_key, backend)):
        title = job.get("title") or ""
        for tag, marker in tags.items():
            if tag in title and marker not in found:
                found[marker] = job
        if len(found) == len(tags):
            break
    rows = {row: {"job": found.get(m)} for m, row in markers.items()}
    for row, fact in rows.items():
        if fact["job"] is None and row in unsettled:
            fact["may_still_come"] = True
    return deliver(inbox, Outcome(Step.RECONCILE, backend, rows))
