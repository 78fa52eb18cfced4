"""The one envelope every task answers with, and the inbox the flow collects envelopes from.

A task reports facts per row (`Outcome.rows`: row index -> what happened), never DB updates:
only the flow turns facts into updates (flows/rules/bookkeeping.py). When a task runs inside the
flow it also drops its outcome into the flow's inbox (a queue in the same process, named by a
plain string parameter), so the flow collects outcomes without reading Prefect results through
the API or its event loop, and goes on even while the Prefect API is unreachable. Run alone, a
task just returns its outcome.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Mapping, Optional, Tuple


class Step(str, Enum):
    CREATE = "create"
    START = "start"
    POLL = "poll"
    RECONCILE = "reconcile"
    DOWNLOAD = "download"
    ERROR_LOGS = "error_logs"
    HOOK = "hook"


@dataclass(frozen=True)
class Outcome:
    step: Step
    backend: str
    rows: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    crashed: Optional[str] = None  # the task failed as a whole; its rows' fate is unknown


# --- the inbox ---------------------------------------------------------------------------
# Addresses look like "<inbox id>/<submission id>": the flow opens the inbox, the dispatcher
# gives each submission its own address, the task delivers to it.
# SimpleQueue: its put() is reentrant, so a signal handler may wake the flow through it.
_inboxes: Dict[str, "queue.SimpleQueue[Tuple[str, Optional[Outcome]]]"] = {}
_stops: Dict[str, threading.Event] = {}  # set when the run is stopping: tasks stop waiting
_lock = threading.Lock()


def open_inbox(inbox_id: str) -> "queue.SimpleQueue[Tuple[str, Optional[Outcome]]]":
    with _lock:
        _stops.setdefault(inbox_id, threading.Event())
        return _inboxes.setdefault(inbox_id, queue.SimpleQueue())


def close_inbox(inbox_id: str) -> None:
    with _lock:
        _inboxes.pop(inbox_id, None)
        _stops.pop(inbox_id, None)


def request_stop(inbox_id: str) -> None:
    with _lock:
        event = _stops.get(inbox_id)
    if event is not None:
        event.set()


def _stop_of(address: str) -> Optional[threading.Event]:
    """The stop event of the run that sent a task; None once its inbox is closed (the run ended)."""
    with _lock:
        return _stops.get(address.rpartition("/")[0])


def stopping(address: Optional[str]) -> bool:
    """Whether the run that sent the task (its inbox `address`) is stopping: create nothing more.
    A run whose inbox is closed has ended: nobody would record a job created for it now."""
    if not address:  # a task run alone (tasks/standalone.py): nobody to stop it
        return False
    event = _stop_of(address)
    return event is None or event.is_set()


def pause(address: Optional[str], seconds: float) -> bool:
    """Sleep `seconds` unless the run that sent the task is stopping; True if it is (stop now).
    A run whose inbox is closed has ended: nobody waits for this task's answer (it slept through
    a start's back-off after the run's end, and the process's exit waited for it)."""
    if not address:  # a task run alone (tasks/standalone.py): nobody to stop it
        time.sleep(seconds)
        return False
    event = _stop_of(address)
    if event is None:
        return True
    return event.wait(seconds)


def deliver(address: Optional[str], outcome: Outcome) -> Outcome:
    """Put `outcome` in the inbox `address` points at (if any is open); return it."""
    if address:
        inbox_id, _, submission = address.rpartition("/")
        with _lock:
            inbox = _inboxes.get(inbox_id)
        if inbox is not None:
            inbox.put((submission, outcome))
    return outcome
