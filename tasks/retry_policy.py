"""How often and how long each kind of request is retried: one policy per kind, written down once.

One layer retries each request. Its budget (`attempts`) covers every failure kind together
(connection errors, 500/502/503/504, 429): urllib3's Retry resends on connection errors and 5xx,
the paced adapter (tasks/connections.py) resends on 429 after the account paused, and both draw
from the same budget, so a request is sent at most `attempts` times, whatever mix of failures it
meets. A wait never exceeds `max_wait` (a server's `Retry-After` included). Tasks add no Prefect
retries on top (a poll or a reconcile that failed is simply made again at the next cycle); what a
task retries itself is another kind of step with its own line in README's table (a POST, a whole
download, a user's hook). `worst_case_seconds()` bounds the time one request can take.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

from tasks.health import BackendHealth, ReportingRetry

RETRIED_STATUSES = (500, 502, 503, 504)  # urllib3 resends these; a 429 is the paced adapter's
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True)
class RequestPolicy:
    name: str
    attempts: int  # sends of one request at most, all failure kinds together
    timeout: float  # seconds to connect, and between two bytes of the answer (requests' timeout)
    backoff_base: float  # waits grow base·2^k (with jitter) ...
    max_wait: float  # ... and never exceed this, a Retry-After included
    statuses: Tuple[int, ...] = RETRIED_STATUSES
    retry_429: bool = True

    def worst_case_seconds(self, answer_seconds: Optional[float] = None) -> float:
        """The longest one request can take when every attempt fails: each attempt waits at most
        `answer_seconds` (default: `timeout`, an answer that never comes), each wait `max_wait`.
        Waits for a pacing turn (quotas, not failures) come on top."""
        each = self.timeout if answer_seconds is None else answer_seconds
        return self.attempts * each + (self.attempts - 1) * (self.max_wait + JITTER_SECONDS)

    def urllib3_retry(self, health: Optional[BackendHealth] = None) -> "BudgetRetry":
        retry = BudgetRetry(
            total=self.attempts - 1, connect=None, read=None, status=None, other=0, redirect=False,
            backoff_factor=self.backoff_base, backoff_max=self.max_wait, backoff_jitter=JITTER_SECONDS,
            status_forcelist=self.statuses, respect_retry_after_header=True, raise_on_status=False,
        )
        retry.max_wait = self.max_wait
        retry.health = health
        return retry


JITTER_SECONDS = 0.5

# A run's requests to a backend that are safe to repeat (GET, DELETE): the job listing, a job's
# metadata and logs, cancel. 8 sends, waits of at most 60 s (a Retry-After of a minute is honoured):
# at most 8·60 + 7·60.5 = 903.5 s.
RUN = RequestPolicy("run", attempts=8, timeout=60.0, backoff_base=0.5, max_wait=60.0)
# Connecting before a run (capabilities, login, /me): a wrong or unreachable URL fails within
# seconds, as bad input. 3 sends, waits of at most 5 s: at most 3·30 + 2·5.5 = 101 s (about a
# second for a refused connection).
SETUP = RequestPolicy("setup", attempts=3, timeout=30.0, backoff_base=0.5, max_wait=5.0,
                      statuses=(429, *RETRIED_STATUSES), retry_429=False)
# A POST (create or start a job) is sent once per attempt of the task: never repeated by this
# layer. The start task decides per failure kind (tasks/start.py, tasks/openeo_calls.py): a lost
# answer is looked up (by marker, or the job's status) before another POST; it waits on 429 and
# outages with `Backoff` (at most 60 s a wait) until the row's start deadline (600 s), then hands
# the row back to the flow.
POST_DEADLINE_SECONDS = 600.0
POST_MAX_WAIT = 60.0
# A `POST /jobs` that went out and got no answer (a read timeout, a connection cut after sending:
# tasks/faults.answer_lost) has an unknown outcome: the backend may still be working on it, and
# create the job after we looked for it. Such a row stays `creating` and is not created again
# before this many request timeouts (of the run's connection) have passed since the run last knew
# a POST of it could be under way: by then a held POST has completed (its job is found by marker
# and adopted) or the backend gave it up (a proxy abandons a request after about one timeout, an
# application server's worker timeout is of the same order). Looking the job up earlier is allowed
# (a job found is adopted at once); only giving the row back waits (flows/rules/scheduler.py).
UNANSWERED_CREATE_GRACE_TIMEOUTS = 3
# The run's request timeout (`RUN.timeout`), for a backend that answers more slowly, and for tests
# that must see a held request time out within seconds.
REQUEST_TIMEOUT_ENV = "OPENEO_JOBS_REQUEST_TIMEOUT_SECONDS"


def request_timeout() -> float:
    """Seconds a run's request waits to connect, and between two bytes of the answer."""
    try:
        return max(0.1, float(os.environ.get(REQUEST_TIMEOUT_ENV) or RUN.timeout))
    except ValueError:
        return RUN.timeout


def unanswered_create_grace(timeout: float) -> float:
    """Seconds a row whose `POST /jobs` may still be under way waits before it is created again."""
    return UNANSWERED_CREATE_GRACE_TIMEOUTS * timeout
# A whole download (or error-log save) of one job: tried again after these waits when it broke
# off midway (a stream cut, a size mismatch: no request failure the layer above could resend).
DOWNLOAD_RETRY_DELAYS = (2.0, 10.0)
# A download (or error-log) task run that ended without answering: Prefect crashed it before or
# around its body (e.g. `ConcurrencySlotAcquisitionError` when its server answered a tag-slot
# request with an error under load). The job's results are still on the backend and a download is
# safe to repeat, so the flow submits it again (after the run's retry hold) this many times before
# the row's results are marked failed (a later run tries those again).
FINISH_TASK_RESUBMITS = 3
# A user's post-processing hook: user code, retried by Prefect (the task's retries).
HOOK_RETRIES = 2
HOOK_RETRY_DELAYS = [2, 10]


class BudgetRetry(ReportingRetry):
    """urllib3's Retry with a cap on Retry-After (`max_wait`) and a hook to spend one attempt of
    the budget on a 429 (`spend_on_429`)."""

    max_wait: Optional[float] = None
    # urllib3 would resend a 429 that carries Retry-After itself, past the account's pause: a 429
    # is the paced adapter's (where it is in `statuses`, as when connecting, urllib3 resends it).
    RETRY_AFTER_STATUS_CODES = frozenset({413, 503})

    def new(self, **kw) -> "BudgetRetry":
        retry = super().new(**kw)
        retry.max_wait = self.max_wait
        return retry

    def get_retry_after(self, response) -> Optional[float]:
        seconds = super().get_retry_after(response)
        return seconds if seconds is None or self.max_wait is None else min(seconds, self.max_wait)

    def spend_on_429(self) -> Optional["BudgetRetry"]:
        """What is left after one more attempt; None when the budget is used up."""
        if self.total is not None and self.total <= 0:
            return None
        return self.new(total=None if self.total is None else self.total - 1)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a `Retry-After` header (seconds or an HTTP date), by urllib3's own parser."""
    if not value:
        return None
    try:
        return _PARSER.parse_retry_after(value)
    except Exception:  # noqa: BLE001 - urllib3's InvalidHeader: no usable delay
        return None


_PARSER = ReportingRetry(0)
