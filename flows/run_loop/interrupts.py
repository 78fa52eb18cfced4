"""Ctrl-C and SIGTERM during a run: the first one asks the cycle to wind down, a second one stops at once.

The cycle (flows/run_loop/cycle.py) reads the `StopSignal`: it starts nothing new, lets running tasks hand
their rows back, persists, and the flow ends `Cancelled` with how to resume.
"""
from __future__ import annotations

import atexit
import contextvars
import gc
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional


@dataclass
class StopSignal:
    """Set from a signal handler or another thread; read by the cycle."""

    event: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    # Called once when the stop is asked for, maybe from a signal handler: they must only do
    # reentrant things (the dispatcher puts a wake-up into its inbox, a `queue.SimpleQueue`).
    wakers: List[Callable[[], None]] = field(default_factory=list)
    at: Optional[float] = None  # monotonic time of the stop: an interrupted run's grace counts from it

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.at = time.monotonic()
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


# How often a run asks Prefect whether it was cancelled (Cancel in the UI of a run no worker
# watches: the CLI, a script): a light GET, and the stop still takes <= ~3 s.
CANCEL_CHECK_SECONDS = 1.0


def watch_for_cancel(stop: StopSignal, flow_run_id: Optional[str],
                     interval: float = CANCEL_CHECK_SECONDS) -> Callable[[], None]:
    """Stop the run when its flow run is set Cancelling through the API (the UI's Cancel). A worker
    also sends SIGTERM then; a CLI or script run has nobody else to tell it. Returns the call
    that ends the watch (when the run ends)."""
    ended = threading.Event()
    if not flow_run_id:
        return ended.set
    context = contextvars.copy_context()  # the flow's Prefect settings (API URL) for the thread

    def watch() -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not ended.wait(interval) and not stop.event.is_set():
                try:
                    state = client.read_flow_run(flow_run_id).state
                except Exception:  # noqa: BLE001 - the API may be down for a while: ask again later
                    continue
                if state is not None and state.is_cancelling():
                    stop.set("cancelled in Prefect")
                    return

    threading.Thread(target=lambda: context.run(watch), name="cancel-watch", daemon=True).start()
    return ended.set


def heartbeat_stopper(flow_run_id: Optional[str]) -> Callable[[], None]:
    """The call that ends this flow run's heartbeat loop now rather than when the run returns.

    Prefect's engine beats on a thread that sleeps in 1-s steps between checks of its stop event,
    and joins it after the flow function returned and the final state was recorded: up to 1 s of
    every stop (0.9-1.1 s of 1.7-2.6 s loaded, bench/stops.py --profile), and of every run's end
    (0.7 s in a two_backends trace, issue 21). Set at the stop and once the cycle is over, the
    thread ends while the run winds down and the join finds it gone. Heartbeats come every
    180 s; the run ends within seconds of the stop, so none is missed. Safe in a signal handler:
    it sets an Event that no code of the main thread waits on or holds until the run's end.
    Private Prefect API (the thread's `_args`: `heartbeat_loop` of `prefect.flow_engine._send_heartbeats`
    and its closure); if it changes, this finds nothing and the stop is as slow as before."""
    for thread in threading.enumerate():
        loop = (getattr(thread, "_args", None) or (None,))[0]
        code = getattr(loop, "__code__", None)
        if code is None or code.co_name != "heartbeat_loop" or not loop.__closure__:
            continue
        cells = dict(zip(code.co_freevars, loop.__closure__))
        try:
            run = cells["engine"].cell_contents.flow_run
            event = cells["stop_event"].cell_contents
        except (KeyError, ValueError, AttributeError):
            continue
        if flow_run_id and str(getattr(run, "id", "")) == flow_run_id and isinstance(event, threading.Event):
            return event.set
    return lambda: None


_exit_freeze_registered = False


def exit_without_final_collection() -> None:
    """Called once a run was interrupted: the process is most likely about to exit (Ctrl-C, a
    worker's SIGTERM). Python's exit then spends about a CPU-second in its last garbage
    collections over Prefect's, pandas' and openeo's objects (seconds on a loaded machine, after
    the run's end: bench/stops.py). At exit only, the objects alive then are frozen out of those
    collections (`gc.freeze`); Python never promised `__del__` of objects alive at exit anyway.
    A process that goes on is not affected until it exits."""
    global _exit_freeze_registered
    if not _exit_freeze_registered:
        _exit_freeze_registered = True
        atexit.register(gc.freeze)
