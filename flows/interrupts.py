"""Ctrl-C and SIGTERM during a run: the first one asks the cycle to wind down, a second one stops at once.

The cycle (flows/cycle.py) reads the `StopSignal`: it starts nothing new, lets running tasks hand
their rows back, persists, and the flow ends `Cancelled` with how to resume.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class StopSignal:
    """Set from a signal handler or another thread; read by the cycle."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()


@contextmanager
def catch_interrupts(stop: StopSignal) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: stop gracefully (the cycle winds down); a second one: at once.

    Only in the main thread, and SIGTERM only where nobody else (a Prefect worker's cancellation
    bridge) handles it already."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        if stop.event.is_set():
            raise KeyboardInterrupt
        stop.set("interrupted by " + signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(sig)
        if sig == signal.SIGTERM and current not in (signal.SIG_DFL, None):
            continue
        previous[sig] = current
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
