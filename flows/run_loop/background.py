"""A background thread for the flow's Prefect API calls (artifacts), so the cycle never waits on them.

While the Prefect API is slow or down, calls queue here (a newer progress update replaces an
older one not yet sent) and the openEO side goes on; they go out when the API is back. Each call
runs in the context of the flow at submission time, so artifacts still belong to the flow run.
"""
from __future__ import annotations

import contextvars
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, Callable, Optional


class BackgroundPublisher:
    def __init__(self, logger: logging.Logger):
        self._logger = logger
        self._jobs: "OrderedDict[str, tuple[contextvars.Context, Callable[[], Any], Future]]" = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._abandoned = False  # closed with a timeout that ran out: what is left is dropped, quietly
        self._counter = 0
        self._thread = threading.Thread(target=self._work, name="prefect-publisher", daemon=True)
        self._thread.start()

    def submit(self, key: str, fn: Callable[[], Any]) -> Future:
        """Run `fn` later; a pending call with the same key is replaced (only the newest matters)."""
        future: Future = Future()
        with self._cond:
            old = self._jobs.pop(key, None)
            if old is not None:
                old[2].cancel()
            self._jobs[key] = (contextvars.copy_context(), fn, future)
            self._cond.notify()
        return future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` later, after everything submitted before it."""
        with self._cond:
            self._counter += 1
            key = f"call-{self._counter}"
        return self.submit(key, fn)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                _, (context, fn, future) = self._jobs.popitem(last=False)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(context.run(fn))
            except BaseException as exc:  # noqa: BLE001 - reported, never raised into the cycle
                if not self._abandoned:  # after the run's end its logger reaches Prefect's API, maybe gone
                    self._logger.warning("Prefect API call failed (the run goes on): %s", exc)
                future.set_exception(exc)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Send what is queued, waiting at most `timeout`; True if everything went out. When the
        timeout runs out, the calls not started are dropped and the one under way ends unreported:
        a stopping run does not wait for a slow or vanished API, and nothing of it talks to Prefect
        later (an interrupted script's exit would wait on such a call: measured 2 min, bench/stops.py)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        with self._cond:
            self._abandoned = True
            for _, _, future in self._jobs.values():
                future.cancel()
            self._jobs.clear()
        return False
