"""Ctrl-C and SIGTERM during a run: the first one asks the cycle to wind down, a second one stops at once.

The cycle (flows/cycle.py) reads the `StopSignal`: it starts nothing new, lets running tasks hand
their rows back, persists, and the flow ends `Cancelled` with how to resume.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, List


@dataclass
class StopSignal:
    """Set from a signal handler or another thread; read by the cycle."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    # Called once when the stop is asked for, maybe from a signal handler: they must only do
    # reentrant things (the dispatcher puts a wake-up into its inbox, a `queue.SimpleQueue`).
    wakers: List[Callable[[], None]] = field(default_factory=list)

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()
            for wake in self.wakers:
                wake()


@contextmanager
def catch_interrupts(stop: StopSignal) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: stop gracefully (the cycle winds down); a second one: at once.

    Only in the main thread. SIGTERM too, in place of Prefect's own handler for the flow run
    (which raises in the middle of whatever runs: the run would end Crashed, its DB persisted
    maybe not): a worker sends SIGTERM on Cancel in the UI and on its own shutdown, and waits
    30 s before SIGKILL; a scheduler's grace period is often as short. Prefect's handler is
    back in place once the cycle is over."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        if stop.event.is_set():
            raise KeyboardInterrupt
        stop.set("interrupted by " + signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
