"""Is a backend answering? Every request of a run's connection reports here (`PacedAdapter` and
the urllib3 retries below it), so an outage is noticed while requests still retry, not only when a
task finally gives up.

A backend is *down* after `DOWN_AFTER` failed attempts in a row (connection errors, 5xx), and
*back* at the first answer after that (any status below 500: a 404 is an answer). Each change is
told once to the listener (the flow logs `backend X is not answering since …` / `backend X is back
after N s`); the display and the progress artifact read `down_since()`.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import urllib3

# Failed attempts in a row before a backend counts as not answering. The run's GET retries
# (tasks/connections.py) make 3 attempts in ~2-4 s, so a single lost request or one 503 says nothing.
DOWN_AFTER = 3

Listener = Callable[[str, "BackendHealth"], None]  # ("down" | "back", health)


class BackendHealth:
    """Failed attempts in a row of one backend, and since when it does not answer (thread-safe)."""

    def __init__(self, name: str, down_after: int = DOWN_AFTER):
        self.name = name
        self.down_after = down_after
        self.failures = 0
        self.first_failure: Optional[float] = None  # epoch seconds of the streak's first failure
        self.last_error: Optional[str] = None
        self.down_for: float = 0.0  # how long the last outage lasted (set when it is back)
        self._down = False
        self._lock = threading.Lock()
        self._listener: Optional[Listener] = None

    def listen(self, listener: Optional[Listener]) -> None:
        self._listener = listener

    def failed(self, reason: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = reason
            if self.first_failure is None:
                self.first_failure = time.time()
            went_down = not self._down and self.failures >= self.down_after
            self._down = self._down or went_down
        if went_down:
            self._tell("down")

    def answered(self) -> None:
        if not self.failures:  # the common case: no lock
            return
        with self._lock:
            came_back = self._down
            if came_back:
                self.down_for = time.time() - (self.first_failure or time.time())
            self.failures, self.first_failure, self._down = 0, None, False
        if came_back:
            self._tell("back")

    def down_since(self) -> Optional[float]:
        """Epoch seconds since when the backend does not answer, or None while it answers."""
        with self._lock:
            return self.first_failure if self._down else None

    def _tell(self, change: str) -> None:
        if self._listener is not None:
            try:
                self._listener(change, self)
            except Exception:  # noqa: BLE001 - telling must never break a request
                pass


def describe_failure(response=None, error: Optional[BaseException] = None) -> str:
    if error is not None:
        return f"{type(error).__name__}: {error}"
    return f"HTTP {getattr(response, 'status', '?')}"


class ReportingRetry(urllib3.util.Retry):
    """urllib3's Retry that tells a `BackendHealth` of each failed attempt it is asked to retry."""

    health: Optional[BackendHealth] = None

    def new(self, **kw) -> "ReportingRetry":
        retry = super().new(**kw)
        retry.health = self.health
        return retry

    def for_health(self, health: BackendHealth) -> "ReportingRetry":
        retry = self.new()
        retry.health = health
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if getattr(_pool, "is_cut", False):  # an interrupted run cut it (tasks/requests_in_flight.py): no resend
            raise urllib3.exceptions.MaxRetryError(_pool, url, error)
        if self.health is not None and (error is not None or (response is not None and response.status >= 500)):
            self.health.failed(describe_failure(response, error))
        return super().increment(method, url, response, error, _pool, _stacktrace)


def describe_change(change: str, health: BackendHealth) -> str:
    """The one line a run prints when a backend stops answering or is back."""
    if change == "down":
        since = time.strftime("%H:%M:%S UTC", time.gmtime(health.first_failure or time.time()))
        return (f"backend {health.name} is not answering since {since} ({health.failures} failed attempts in a row; "
                f"last: {health.last_error}); its requests keep retrying")
    return f"backend {health.name} is back after {health.down_for:.0f} s"
