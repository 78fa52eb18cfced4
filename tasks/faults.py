"""Failure kinds of openEO calls, one exception class each, and how long to wait on each.

Tasks turn raw HTTP/openEO errors into these so that the caller can decide per kind:
wait and retry (rate limit, outage), reconcile (lost response on a POST), or give up on
one row only (bad response, job-level refusal).
"""
from __future__ import annotations

import random
from typing import Optional

import requests
from urllib3.exceptions import ConnectTimeoutError
from openeo.rest import OpenEoApiError, OpenEoApiPlainError

from tasks.retry_policy import parse_retry_after


class OpenEOTaskError(Exception):
    """Base class of the failures our tasks distinguish."""


class RateLimited(OpenEOTaskError):
    """429: the request was not processed; wait `retry_after` (if the backend said) and retry."""

    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class BackendUnavailable(OpenEOTaskError):
    """5xx or connection error: the backend may or may not have processed the request."""


class AnswerLost(BackendUnavailable):
    """The request went out and no answer came back (a read timeout, the connection cut after
    sending, a gateway's 504): the backend may have processed it, or may still be processing it.
    For a `POST /jobs` the outcome is unknown: never create again before looking the job up after
    a grace period (tasks/retry_policy.py, UNANSWERED_CREATE_GRACE_TIMEOUTS)."""


class JobLimitReached(OpenEOTaskError):
    """The backend refused a new/started job because of the user's concurrent job or queue limit."""


class AccountCannotPay(OpenEOTaskError):
    """402, or an openEO error code saying the account's credits are used up: no new job on this
    backend will be accepted for now (stop starting there; running jobs go on)."""


class UnexpectedResponse(OpenEOTaskError):
    """The backend answered something we cannot use (invalid JSON, missing fields)."""


# openEO error codes meaning "too many jobs right now", not "this job is broken".
JOB_LIMIT_CODES = frozenset({"ConcurrentJobLimit", "QueueLimit", "JobQueueLimit", "TooManyJobs"})
# openEO error codes meaning "the account cannot pay" (the API's PaymentRequired, and what
# backends answer with other statuses for an exhausted budget).
CANNOT_PAY_CODES = frozenset({"PaymentRequired", "InsufficientCredits", "InsufficientBudget", "BudgetExceeded",
                              "CreditsExhausted"})


def answer_lost(exc: BaseException) -> bool:
    """Whether a failed request was sent and got no answer (its outcome is unknown), rather than
    never sent or refused before processing (safe to send again).

    Unknown: a read timeout, a connection reset or aborted once the connection was made (requests'
    ConnectionError around urllib3's ProtocolError), a 504 (a gateway gave up waiting for the
    backend, which may still be working on it). Safe: a connection refused or not made in time
    (urllib3's NewConnectionError / ConnectTimeoutError, also at the end of its retries), a TLS
    handshake that failed, any answer the backend gave itself (429, 500, 502, 503: a 502 after the
    work is done is found by looking the job up at once). A connection error of another kind counts
    as unknown: waiting costs a grace period, a wrong guess a duplicate job.
    """
    if isinstance(exc, (requests.ConnectTimeout, requests.exceptions.SSLError)):
        return False
    if isinstance(exc, requests.Timeout):  # ReadTimeout
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", None) or reason  # urllib3's MaxRetryError: its last failure
        return not isinstance(reason, ConnectTimeoutError)  # NewConnectionError is one
    if isinstance(exc, (OpenEoApiError, OpenEoApiPlainError)):
        return exc.http_status_code == 504
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return exc.response.status_code == 504
    return False


def classify(exc: BaseException) -> BaseException:
    """Map an exception raised by the openeo client or requests to one of our failure kinds.

    Returns the original exception when it is none of the transient kinds (a real error).
    """
    if isinstance(exc, OpenEOTaskError):
        return exc
    if answer_lost(exc):
        return AnswerLost(f"sent, no answer: {exc}")
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return BackendUnavailable(f"connection failed: {exc}")
    if isinstance(exc, (OpenEoApiError, OpenEoApiPlainError)):
        status = exc.http_status_code
        code = getattr(exc, "code", None)
        if status == 429:
            return RateLimited(f"rate limited (429): {exc}", retry_after=getattr(exc, "retry_after", None))
        if status == 402 or code in CANNOT_PAY_CODES:
            return AccountCannotPay(f"account cannot pay ({status} {code}): {exc}")
        if code in JOB_LIMIT_CODES:
            return JobLimitReached(f"{code}: {exc}")
        if status is not None and status >= 500:
            return BackendUnavailable(f"backend error {status}: {exc}")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 429:
            return RateLimited(
                f"rate limited (429) on {exc.response.url}", parse_retry_after(exc.response.headers.get("Retry-After"))
            )
        if status == 402:
            return AccountCannotPay(f"account cannot pay (402) on {exc.response.url}")
        if status >= 500:
            return BackendUnavailable(f"backend error {status} on {exc.response.url}")
    return exc


class Backoff:
    """Exponential backoff with full jitter, honouring a server-given delay when there is one."""

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: Optional[random.Random] = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, server_delay: Optional[float] = None) -> float:
        self.attempt += 1
        if server_delay is not None:
            # A little jitter on top so that many waiting tasks do not return in lockstep.
            return min(self.cap, server_delay) + self._rng.uniform(0, 0.1 * max(server_delay, 0.1))
        return self._rng.uniform(0, min(self.cap, self.base * 2 ** (self.attempt - 1)))
