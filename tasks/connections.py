"""Authenticated openEO connections: row markers on `POST /jobs`, request counts, token renewal,
and every request through the account's pacer (`tasks/accounts/pacing.py`): quotas before
sending, an account-wide pause on 429.

The flow registers its connections per run (tasks/connection_registry.py) before it submits any
task; tasks look them up by key.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
import time
from typing import Dict, List, Optional
from urllib.parse import urlsplit

import openeo
import requests
import urllib3
from openeo.rest import OpenEoApiError, OpenEoApiPlainError
from openeo.rest.auth.auth import BearerAuth

from tasks.faults import AnswerLost, Backoff, answer_lost
from tasks.health import BackendHealth, ReportingRetry
from tasks.accounts.pacing import AccountPacer
from tasks.requests_in_flight import CuttablePoolManager, refuse_if_cut
from tasks.retry_policy import IDEMPOTENT_METHODS, RUN, SETUP, BudgetRetry, parse_retry_after

# Retries: one budget per request, for every failure kind (tasks/retry_policy.py). A POST is
# never resent here, so creating or starting a job is never blindly repeated: tasks handle POST
# failures themselves (see tasks/start.py).
IDEMPOTENT_RETRY = RUN.urllib3_retry()
SETUP_RETRY = SETUP.urllib3_retry()
START_PATH = re.compile(r"/jobs/[^/]+/results/?$")

MARKER_PREFIX = "ojm:"


def marker_tag(marker: str) -> str:
    """How a row's marker appears in a job title, e.g. `[ojm:3f2a9c1e-r17]`."""
    return f"[{MARKER_PREFIX}{marker}]"


def same_origin(url_a: str, url_b: str) -> bool:
    a, b = urlsplit(url_a), urlsplit(url_b)
    default = {"http": 80, "https": 443}
    return (
        a.scheme.lower() == b.scheme.lower()
        and (a.hostname or "").lower() == (b.hostname or "").lower()
        and (a.port or default.get(a.scheme.lower())) == (b.port or default.get(b.scheme.lower()))
    )


class _CallContext(threading.local):
    """Per-thread state of the task that currently uses a shared connection."""

    marker: Optional[str] = None
    started_job_ids: Optional[List[str]] = None
    created_job_ids: Optional[List[str]] = None
    unanswered_creates: Optional[List[str]] = None  # POST /jobs sent without an answer (why, each)
    auth_used: object = None  # the auth of this thread's last request (to renew an expired token once)


_LAST_429 = threading.local()  # Retry-After of this thread's last 429, for the error raised on it


def spent_on_429(response: requests.Response, budget) -> Optional[BudgetRetry]:
    """What is left of a request's budget after urllib3's resends (if any) and this 429; None: used up."""
    left = getattr(response.raw, "retries", None) or budget
    return left.spend_on_429() if isinstance(left, BudgetRetry) else None


class PacedAdapter(requests.adapters.HTTPAdapter):
    """Sends each request to the backend's origin only when its account's pacer lets it go.

    A 429 pauses the whole account for `Retry-After` (at most the policy's `max_wait`; a backoff
    when the header is missing); an idempotent request is then sent again, from the same budget
    of attempts as urllib3's resends on 5xx (tasks/retry_policy.py), a POST is not: its caller
    decides. Requests to other origins (asset hosts) are not paced. Paced here rather than in
    the session so that a redirect, which the session follows after this returns, takes a turn
    of its own instead of waiting for the slot its first hop still holds.
    """

    _budget = threading.local()

    def __init__(self, origin: str, pacer: AccountPacer, health: Optional[BackendHealth] = None, **kwargs):
        self.origin = origin
        self.pacer = pacer
        self.health = health
        super().__init__(**kwargs)

    # urllib3 reads `max_retries` on each send: during a paced send it is what is left of the
    # request's budget (per thread), otherwise the adapter's policy.
    @property
    def max_retries(self):
        return getattr(self._budget, "retry", None) or self._max_retries

    @max_retries.setter
    def max_retries(self, retry) -> None:
        self._max_retries = retry

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager = CuttablePoolManager(num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs)

    def send(self, request: requests.PreparedRequest, stream: bool = False, **kwargs) -> requests.Response:
        refuse_if_cut(self.poolmanager)  # an interrupted run's task: no turn, no request
        if not same_origin(request.url or "", self.origin):
            return super().send(request, stream=stream, **kwargs)
        is_start = request.method == "POST" and bool(START_PATH.search(urlsplit(request.url).path))
        budget = self._max_retries  # the request's attempts, whatever fails (urllib3 spends them on 5xx)
        backoff = Backoff(base=RUN.backoff_base, cap=RUN.max_wait)
        while True:
            turn = self.pacer.acquire(is_start)
            self._budget.retry = budget
            try:
                response = super().send(request, stream=stream, **kwargs)
            except BaseException:
                turn.release()
                raise
            finally:
                self._budget.retry = None
            if self.health is not None:  # attempts that failed and were retried are told by the Retry
                if response.status_code >= 500:
                    self.health.failed(f"HTTP {response.status_code} on {request.method} {urlsplit(request.url).path}")
                else:
                    self.health.answered()
            if response.status_code == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                _LAST_429.retry_after = retry_after
                self.pacer.pause(min(retry_after, RUN.max_wait) if retry_after is not None else backoff.next_delay())
                left = spent_on_429(response, budget)
                if request.method in IDEMPOTENT_METHODS and left is not None:
                    budget = left
                    response.close()
                    turn.release()
                    continue
            if stream:
                turn.release_with(response)  # the body still streams: the slot is held until then
            else:
                turn.release()
            return response


class ManagedConnection(openeo.Connection):
    """An openeo Connection that the manager can observe and keep authenticated.

    - tags `POST /jobs` with the calling task's row marker (exactly-once creation),
    - records which jobs the calling thread created and started (so a job started by the
      user's callback is not started twice, without an extra status request), and each
      `POST /jobs` that went out without an answer (its outcome is unknown: after one, the
      context sends no other `POST /jobs`, even when the callback would retry it),
    - counts requests per method + route,
    - renews basic-auth tokens the way openeo renews OIDC ones (on 401/403 TokenInvalid), and
      renews any token once when many threads find it expired at the same time,
    - attaches `Retry-After` to the raised openEO errors (`exc.retry_after`),
    - paces its requests to the account's quotas (`pacer`, see `PacedAdapter`).
    """

    def __init__(self, url: str, **kwargs):
        self.request_counts: Dict[str, int] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._context = _CallContext()
        self._basic_credentials: Optional[tuple] = None
        self._auth_lock = threading.Lock()
        self.token_obtained_at: float = 0.0
        self.pacer: Optional[AccountPacer] = None
        self.health = BackendHealth(url)  # told by the paced adapter (`use_pacing`); the flow names and watches it
        # Which backend account this is (tasks/accounts/identity.py), set once when it connects
        # (flows/setup.connect_backend): slots, start turns, logs and tags all use it.
        self.account: Optional[str] = None
        super().__init__(url, **kwargs)

    # --- observation -------------------------------------------------------------------
    def count(self, method: str, route: str) -> None:
        with self._counts_lock:
            self.request_counts[f"{method.upper()} {route}"] += 1

    def request(self, method: str, path: str, *args, **kwargs):
        route = _route_template(path)
        creates = method.upper() == "POST" and route == "/jobs"
        unanswered = self._context.unanswered_creates if creates else None
        if unanswered:
            raise AnswerLost(f"not creating another job: an earlier POST /jobs got no answer ({unanswered[-1]})")
        if creates and self._context.marker:
            body = dict(kwargs.get("json") or {})
            title = body.get("title") or ""
            tag = marker_tag(self._context.marker)
            if tag not in title:
                body["title"] = f"{title} {tag}".strip()
            kwargs["json"] = body
        self.count(method, route)
        self._context.auth_used = self.auth
        _LAST_429.retry_after = None
        try:
            response = super().request(method, path, *args, **kwargs)
        except Exception as exc:
            if isinstance(exc, (OpenEoApiError, OpenEoApiPlainError)) and exc.http_status_code == 429:
                exc.retry_after = _LAST_429.retry_after
            if unanswered is not None and answer_lost(exc):
                unanswered.append(f"{type(exc).__name__}: {exc}")
            raise
        if method.upper() == "POST" and response.status_code < 300:
            if route == "/jobs/{id}/results" and self._context.started_job_ids is not None:
                self._context.started_job_ids.append(path.strip("/").split("/")[1])
            if route == "/jobs" and self._context.created_job_ids is not None:
                job_id = response.headers.get("OpenEO-Identifier")
                if job_id:
                    self._context.created_job_ids.append(job_id)
        return response

    def call_context(self, marker: Optional[str]) -> "_Tracking":
        return _Tracking(self._context, marker)

    # --- authentication ----------------------------------------------------------------
    def authenticate_basic(self, username: Optional[str] = None, password: Optional[str] = None):
        result = super().authenticate_basic(username=username, password=password)
        # Kept in memory only, to renew an expired token as openeo does for OIDC.
        self._basic_credentials = (username, password)
        self.token_obtained_at = time.time()
        return result

    def try_access_token_refresh(self, *, reason: Optional[str] = None) -> bool:
        stale_auth = self._context.auth_used or self.auth  # what this thread's failed request sent
        with self._auth_lock:
            if self.auth is not stale_auth:
                return True  # another thread renewed it meanwhile: one token request, not one per thread
            if self._basic_credentials is not None:
                username, password = self._basic_credentials
                super().authenticate_basic(username=username, password=password)
                refreshed = True
            else:
                refreshed = super().try_access_token_refresh(reason=reason)
            if refreshed:
                self.token_obtained_at = time.time()
            return refreshed

    def refresh_token_if_older(self, max_age_seconds: float) -> bool:
        """Renew a (basic or OIDC) access token that is older than `max_age_seconds`, before it expires."""
        if not isinstance(self.auth, BearerAuth):
            return False
        now = time.time()
        if not self.token_obtained_at:  # OIDC logins do not go through authenticate_basic
            self.token_obtained_at = now
        if now - self.token_obtained_at < max_age_seconds:
            return False
        self.token_obtained_at = now  # also for tokens that cannot be renewed: try again a period later
        self._context.auth_used = self.auth
        try:
            return self.try_access_token_refresh(reason="proactive renewal")
        except Exception as exc:  # noqa: BLE001 - the reactive renewal on 401/403 still applies
            logging.getLogger(__name__).warning("proactive token renewal for %s failed: %s", self.root_url, exc)
            return False

    def bearer_header_for(self, url: str) -> Dict[str, str]:
        """The Authorization header to send to `url`: only on this backend's own origin."""
        if isinstance(self.auth, BearerAuth) and same_origin(url, self.root_url):
            return {"Authorization": f"Bearer {self.auth.bearer}"}
        return {}


class _Tracking:
    def __init__(self, context: _CallContext, marker: Optional[str]):
        self._context = context
        self._marker = marker
        self.started_job_ids: List[str] = []
        self.created_job_ids: List[str] = []
        self.unanswered_creates: List[str] = []

    def __enter__(self) -> "_Tracking":
        self._context.marker = self._marker
        self._context.started_job_ids = self.started_job_ids
        self._context.created_job_ids = self.created_job_ids
        self._context.unanswered_creates = self.unanswered_creates
        return self

    def __exit__(self, *exc) -> None:
        self._context.marker = None
        self._context.started_job_ids = None
        self._context.created_job_ids = None
        self._context.unanswered_creates = None


def _route_template(path: str) -> str:
    """`/jobs/j-123/results` -> `/jobs/{id}/results`, for request counters."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if len(parts) >= 2 and parts[0] in ("jobs", "collections", "process_graphs", "services"):
        parts[1] = "{id}"
    return "/" + "/".join(parts)


def make_session(pool_size: int = 32, retry: urllib3.util.Retry = IDEMPOTENT_RETRY) -> requests.Session:
    session = requests.Session()
    use_retry_policy(session, retry, pool_size)
    return session


def use_retry_policy(session: requests.Session, retry: urllib3.util.Retry, pool_size: int = 32) -> None:
    adapter = requests.adapters.HTTPAdapter(max_retries=retry, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def use_pacing(connection: ManagedConnection, pacer: AccountPacer, retry: urllib3.util.Retry = IDEMPOTENT_RETRY,
               pool_size: int = 32) -> None:
    """From now on, requests of `connection` to its backend go through `pacer` (with `retry` for 5xx),
    and tell `connection.health` whether the backend answers."""
    health = connection.health
    if isinstance(retry, ReportingRetry):
        retry = retry.for_health(health)
    adapter = PacedAdapter(connection.root_url, pacer, health, max_retries=retry, pool_maxsize=pool_size)
    connection.session.mount("http://", adapter)
    connection.session.mount("https://", adapter)
    connection.pacer = pacer
