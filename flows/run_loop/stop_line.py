"""The one `stopping:` line of an interrupted run, told the moment the stop is asked for (issue 16).

The cycle reads the stop between cycles; at scale a cycle is long (hundreds of outcomes applied, a
line each, then a persist: seconds on a loaded machine), so a line told by the cycle came seconds
after the Ctrl-C, and the tasks kept creating jobs meanwhile. `StopAnnouncement` waits for the stop
on a thread of its own: it tells the line at once and tells the run's tasks that the run is stopping
(`tasks/outcome.py`: waits end, a create batch creates nothing more); the cycle winds down when it
gets there and tells no second line.

The thread runs in the flow's context (a copy of its context variables): Prefect's run logger and
its API log handling read the flow run from there; from a bare thread they stalled (a 1500-row CLI
stop took 37 s, 1.46 s with the context).
"""
from __future__ import annotations

import contextvars
import logging
import queue
import threading
from typing import Callable, Optional

from flows.run_loop.interrupts import StopSignal


def stopping_line(reason: str, grace_seconds: float) -> str:
    """`stopping: interrupted by SIGINT; starting no new jobs, waiting at most 1.5 s for running tasks`."""
    return f"stopping: {reason}; starting no new jobs, waiting at most {grace_seconds:g} s for running tasks"


class StopAnnouncement:
    """Tells `stopping_line` and calls `tell_tasks` once, as soon as `stop` is set (from a signal
    handler, the Cancel watch, any thread). `close()` at the run's end ends the thread."""

    def __init__(self, stop: StopSignal, logger: logging.Logger, grace_seconds: float,
                 tell_tasks: Callable[[], None] = lambda: None):
        self.stop = stop
        self.logger = logger
        self.grace_seconds = grace_seconds
        self.tell_tasks = tell_tasks
        # A SimpleQueue: its put() is reentrant, so the waker may run in a signal handler (an Event's
        # set() takes a lock the interrupted thread may hold).
        self._inbox: "queue.SimpleQueue[str]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        stop.wakers.append(lambda: self._inbox.put("stop"))

    def start(self) -> "StopAnnouncement":
        context = contextvars.copy_context()  # the flow's: run logger, Prefect settings and client
        self._thread = threading.Thread(target=context.run, args=(self._wait,), name="stop-announcement", daemon=True)
        self._thread.start()
        return self

    def _wait(self) -> None:
        # set before the waker was added (a Cancel seen before the cycle began): the queue stays empty
        if not self.stop.event.is_set() and self._inbox.get() != "stop":
            return
        try:
            self.tell_tasks()  # first: the tasks stop creating while the line goes out
        finally:
            self.logger.warning("%s", stopping_line(self.stop.reason or "interrupted", self.grace_seconds))

    def close(self) -> None:
        """The run is over. A stop's line is out before this returns (it is all a user sees of the
        stop; waited for at most 2 s); otherwise the thread just ends."""
        self._inbox.put("end")
        if self._thread is not None and self.stop.event.is_set():
            self._thread.join(timeout=2.0)
