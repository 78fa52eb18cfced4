"""When a store writes its changes: at once when forced (intents before any POST), otherwise at most
once per `interval` seconds, so a cycle every 0.1 s does not rewrite a 10k-row file ten times a
second. Both stores (`jobdb/store.py`, `jobdb/sql/store.py`) keep their own record of what changed
and ask this throttle whether a write is due.
"""
from __future__ import annotations

import time
from typing import Optional


class PersistThrottle:
    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.last_write = 0.0  # time.monotonic() of the last write
        self.writes = 0

    def due(self, changed: bool, force: bool = False) -> bool:
        """Whether to write now: something changed, and the write is forced or the interval is over."""
        return changed and (force or time.monotonic() - self.last_write >= self.interval)

    def due_at(self, changed: bool) -> Optional[float]:
        """When (time.monotonic) a throttled write of unsaved changes falls due; None if all is saved.
        The run loop wakes for it, so a long poll interval never leaves job ids only in memory."""
        return self.last_write + self.interval if changed else None

    def wrote(self) -> None:
        self.last_write = time.monotonic()
        self.writes += 1
