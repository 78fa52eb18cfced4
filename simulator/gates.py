"""Gates: hold requests of chosen routes inside the server until a test lets them go.

A test that must interrupt a client at a precise moment ("while a start is in flight", "while a
download runs") closes the gate of that route, waits until a request is held there, and acts:
the moment is reached by an event, not by a guess of how long something takes. Held requests
go on when the gate opens (the client may be gone by then, as with a real backend).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, Optional, Set


class Gates:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._closed: Set[str] = set()
        self._held: Counter = Counter()  # requests waiting at a closed gate, per 'METHOD /template'
        self._draining: Counter = Counter()  # requests that were held and are being handled now, per route

    def close(self, *routes: str) -> None:
        """Hold every new request on these 'METHOD /template' routes (e.g. 'POST /jobs/{id}/results')."""
        with self._cond:
            self._closed.update(routes)

    def open(self, *routes: str) -> None:
        """Let held and new requests of these routes (all routes if none given) go on."""
        with self._cond:
            if routes:
                self._closed.difference_update(routes)
            else:
                self._closed.clear()
            self._cond.notify_all()

    def held(self) -> Dict[str, int]:
        with self._cond:
            return {route: n for route, n in self._held.items() if n}

    @contextmanager
    def passage(self, route: str) -> Iterator[None]:
        """Around the server's handling of a request: waits while the route's gate is closed; a
        request that was held counts as draining until its handler has returned."""
        with self._cond:
            if route not in self._closed:
                held = False
            else:
                held = True
                self._held[route] += 1
                self._cond.notify_all()
                try:
                    while route in self._closed:
                        self._cond.wait()
                finally:
                    self._held[route] -= 1
                    self._draining[route] += 1
        try:
            yield
        finally:
            if held:
                with self._cond:
                    self._draining[route] -= 1
                    self._cond.notify_all()

    def wait_held(self, routes: Iterable[str], timeout: float, count: int = 1) -> Optional[str]:
        """Wait until `count` requests are held on one of `routes`; return that route (None: timed out)."""
        routes = list(routes)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for route in routes:
                    if self._held[route] >= count:
                        return route
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait_drained(self, timeout: float, routes: Optional[Iterable[str]] = None) -> bool:
        """Wait until no request is held and every released one was handled (after `open`), on
        `routes` only if given (another route's gate may stay closed meanwhile)."""
        deadline = time.monotonic() + timeout
        chosen = None if routes is None else set(routes)

        def busy() -> bool:
            return any(n for route, n in (self._held + self._draining).items() if chosen is None or route in chosen)

        with self._cond:
            while busy():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
