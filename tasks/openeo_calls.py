"""Plain functions for the openEO calls our tasks make, with per-kind fault handling.

Idempotent GETs are retried by the connection's urllib3 adapter (429 with Retry-After, 5xx);
the functions here add what urllib3 cannot know: how to recover a POST whose response was
lost, and when a failure is about one job rather than about the backend.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterable, Iterator, Optional

from openeo.rest import OpenEoApiError, OpenEoApiPlainError

from tasks.connections import ManagedConnection, marker_tag
from tasks.faults import (
    AccountCannotPay,
    Backoff,
    BackendUnavailable,
    JobLimitReached,
    RateLimited,
    UnexpectedResponse,
    classify,
)
from jobdb.status import BACKEND_STARTED, CREATED, QUEUED, from_backend

log = logging.getLogger(__name__)

LISTING_PAGE_SIZE = 100


def iter_job_listing(connection: ManagedConnection, page_size: int = LISTING_PAGE_SIZE) -> Iterator[dict]:
    """All jobs of the user, following `rel=next` links page by page."""
    path: Optional[str] = "/jobs"
    params: Optional[dict] = {"limit": page_size}
    seen_pages = set()
    while path:
        response = connection.get(path, params=params, expected_status=200)
        try:
            body = response.json()
            jobs = body["jobs"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UnexpectedResponse(f"job listing of {connection.root_url} is not valid: {exc}") from exc
        for job in jobs:
            if isinstance(job, dict) and "id" in job:
                yield job
        next_links = [link.get("href") for link in body.get("links", []) if link.get("rel") == "next"]
        path, params = (next_links[0], None) if next_links and next_links[0] else (None, None)
        if path in seen_pages:  # a backend that links a page to itself would loop forever
            break
        seen_pages.add(path)


def find_job_by_marker(connection: ManagedConnection, marker: str) -> Optional[dict]:
    """The listing entry of the job whose title carries `marker`, if the backend has one."""
    tag = marker_tag(marker)
    for job in iter_job_listing(connection):
        if tag in (job.get("title") or ""):
            return job
    return None


def describe_job(connection: ManagedConnection, job_id: str) -> dict:
    response = connection.get(f"/jobs/{job_id}", expected_status=200)
    try:
        metadata = response.json()
        metadata["status"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UnexpectedResponse(f"metadata of job {job_id} is not valid: {exc}") from exc
    return metadata


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def _sleep_or_give_up(backoff: Backoff, deadline: float, delay_hint: Optional[float], what: str,
                      sleep: Callable[[float], bool] = _sleep) -> bool:
    """Sleep before the next attempt; False when the deadline would pass first or `sleep` says stop."""
    delay = backoff.next_delay(delay_hint)
    if time.monotonic() + delay > deadline:
        return False
    log.info("%s: waiting %.1f s before retrying", what, delay)
    return sleep(delay)


def start_job_carefully(
    connection: ManagedConnection, job_id: str, deadline: float, sleep: Callable[[float], bool] = _sleep
) -> str:
    """`POST /jobs/{id}/results` until the job is started; returns the job's status afterwards.

    Returns "created" when the backend refuses for now (job limits) or the deadline passes:
    the job exists and the flow starts it later. A lost response (5xx, connection reset)
    is checked against the job's status before another POST, so a job is never started twice.
    """
    backoff = Backoff()
    while True:
        try:
            connection.post(f"/jobs/{job_id}/results", expected_status=202)
            return QUEUED
        except Exception as exc:  # noqa: BLE001 - classified below, real errors re-raised
            kind = classify(exc)
            if isinstance(kind, JobLimitReached):
                log.info("start of %s refused for now: %s", job_id, kind)
                return CREATED
            if isinstance(kind, RateLimited):
                if not _sleep_or_give_up(backoff, deadline, kind.retry_after, f"start {job_id} rate limited", sleep):
                    return CREATED
                continue
            if isinstance(kind, BackendUnavailable):
                status = _status_after_ambiguous_failure(connection, job_id)
                if status in BACKEND_STARTED:
                    return status
                if not _sleep_or_give_up(backoff, deadline, None, f"start {job_id} failed ({kind})", sleep):
                    return CREATED
                continue
            raise


def _status_after_ambiguous_failure(connection: ManagedConnection, job_id: str) -> Optional[str]:
    try:
        return from_backend(describe_job(connection, job_id)["status"])
    except Exception as exc:  # noqa: BLE001 - any failure means "unknown"
        log.info("status of %s unknown after failed start: %s", job_id, classify(exc))
        return None


def fetch_error_logs(connection: ManagedConnection, job_id: str) -> list:
    response = connection.get(f"/jobs/{job_id}/logs", params={"level": "error"}, expected_status=200)
    try:
        return list(response.json().get("logs", []))
    except (ValueError, AttributeError) as exc:
        raise UnexpectedResponse(f"logs of job {job_id} are not valid: {exc}") from exc


def cancel_job(connection: ManagedConnection, job_id: str) -> None:
    connection.delete(f"/jobs/{job_id}/results", expected_status=204)


def is_refused_for_good(exc: BaseException) -> bool:
    """402 Payment Required (or an error code saying so): the account is out of credits."""
    return isinstance(classify(exc), AccountCannotPay)


def is_api_error(exc: BaseException, status: Optional[int] = None) -> bool:
    return isinstance(exc, (OpenEoApiError, OpenEoApiPlainError)) and (
        status is None or exc.http_status_code == status
    )


def statuses_from_listing(
    connection: ManagedConnection, wanted: Iterable[str]
) -> Dict[str, dict]:
    """Listing entries for the wanted job ids; stops paging once all are found."""
    wanted = set(wanted)
    found: Dict[str, dict] = {}
    if not wanted:
        return found
    for job in iter_job_listing(connection):
        if job["id"] in wanted:
            found[job["id"]] = job
            if len(found) == len(wanted):
                break
    return found
