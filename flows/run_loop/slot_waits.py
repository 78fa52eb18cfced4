"""Task runs still waiting for a tag's concurrency slot when a run is interrupted: abandoned, not waited for.

Every task run of a run carries its backend's tags (flows/config/limits.py), and Prefect's task
engine asks its server for a slot of these tags before the task's body runs, through one
concurrency service per tag set that makes the requests one at a time. At the stop of a big run
(bench/stops.py --scale: 20 start workers, hundreds of submitted task runs) most task runs are
still in that queue, and the task runners' exit waited for each of them to get its slot, only to
see the runner's cancel event and end. Once a script's temporary server has gone with its Ctrl-C,
the request in flight also sleeps out the client's retry back-off (2, 4 s ...) before its refusal
(flows/run_loop/api_gone.py); under an operator's full tag limit it waits for a slot to free.

A task run whose slot request has not been answered has not begun its body: it made no request
to any backend, and its rows are what the job DB says (`creating` with the marker persisted
before any POST, or `queued_for_start` with the job's id), which the next run picks up like any
interrupted run's. So at an interrupted stop its wait is cancelled (the request's future:
Prefect's own way for a caller that leaves), the task run ends at once, and the dispatcher
forgets it without an outcome. A task run whose slot was granted is left alone: its body may
have a POST out, and it answers as usual.

Mechanism, private Prefect API (`ConcurrencySlotAcquisitionWithLeaseService`: its queue items
`(..., holder, future)`, `_handle`; `_QueueServiceBase._instances`); if it changes, nothing is
abandoned and the stop is as slow as before, nothing worse:
- the service's item handler skips the items whose caller left (a request for nobody would only
  be released again) and cancels, when their turn comes, the items of task runs that are leaving;
- it makes the request in flight in an asyncio task of its own, cancelled once its caller left,
  while it waits between tries (a 423 "no slot free": its Retry-After sleep) or, once Prefect's
  requests are refused (the API is gone), whenever: nothing can be granted then. A request on the
  wire to a live API is not cut (its grant would be lost, the slot held until its lease expires):
  it completes, and a grant is released by Prefect's own `_discard`; a refusal ends it.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Collection, Dict, Optional, Set, Tuple

_lock = threading.Lock()
_installed = False
_leaving: Set[uuid.UUID] = set()  # task runs of an interrupted run: their slot requests are not made
_abandoned: Set[str] = set()  # of those, the ones whose wait was cancelled (their bodies never ran), as text
_api_refused = threading.Event()  # flows/run_loop/api_gone.py refuses Prefect's requests: nothing can be granted


@dataclass
class _Request:
    """One slot request in flight in a service."""

    future: Any  # concurrent.futures.Future: its caller's wait
    holder: Optional[uuid.UUID]
    task: "asyncio.Task[Any]"
    loop: asyncio.AbstractEventLoop
    on_wire: bool = False  # a try of it is at the server now
    granted: bool = False


_in_flight: Dict[int, _Request] = {}  # id(service) -> its request in flight
_current: "contextvars.ContextVar[Optional[_Request]]" = contextvars.ContextVar("slot_request", default=None)


def install() -> None:
    """Wrap the slot service's item handler and its client's slot request, once per process."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    try:
        from prefect.client.orchestration import PrefectClient
        from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService as Service
    except ImportError:  # see the module's docstring
        return
    handle, increment = Service._handle, PrefectClient.increment_concurrency_slots_with_lease

    @functools.wraps(handle)
    async def handle_unless_left(self, item):
        future, holder = item[-1], _holder_id(item)
        if holder in _leaving:
            _cancel_wait(future, holder)
        if future.cancelled():  # its caller left while it was queued: nothing to ask for
            return None
        request = _Request(future, holder, None, asyncio.get_running_loop())  # type: ignore[arg-type]
        token = _current.set(request)
        try:
            request.task = asyncio.ensure_future(handle(self, item))  # (copies the context: `_current`)
        finally:
            _current.reset(token)
        _in_flight[id(self)] = request
        try:
            return await request.task
        except asyncio.CancelledError:
            if request.task.cancelled() and future.cancelled() and not _outer_cancelled():
                return None  # cut short (`_cut`): its caller has left
            raise
        finally:
            _in_flight.pop(id(self), None)

    @functools.wraps(increment)
    async def increment_unless_left(self, *args, **kwargs):
        request = _current.get()
        if request is None:
            return await increment(self, *args, **kwargs)
        if request.future.cancelled():  # its caller left while it waited between tries
            raise asyncio.CancelledError
        request.on_wire = True
        try:
            response = await increment(self, *args, **kwargs)
        except Exception:
            request.on_wire = False
            if request.future.cancelled():  # no grant, and nobody waits for the next try
                raise asyncio.CancelledError from None
            raise
        request.on_wire, request.granted = False, True
        return response

    Service._handle = handle_unless_left
    PrefectClient.increment_concurrency_slots_with_lease = increment_unless_left
    logging.getLogger("prefect.task_runs").addFilter(_quiet_abandoned)


def _quiet_abandoned(record: logging.LogRecord) -> bool:
    """Prefect's lines about an abandoned task run ("Crash detected! Execution was cancelled ...",
    one per task run: hundreds at a big run's stop): the run said in one line that it stops."""
    task_run_id = getattr(record, "task_run_id", None)
    return not (task_run_id and task_run_id in _abandoned)


def abandon_slot_waits(task_run_ids: Collection[uuid.UUID]) -> None:
    """The interrupted run's task runs: those still waiting for a slot end now, without their body;
    those not asking yet ask for none. Safe to call again (it only ever cancels waits)."""
    if not task_run_ids:
        return
    with _lock:
        _leaving.update(task_run_ids)
    try:
        from prefect._internal.concurrency.services import _QueueServiceBase
        from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService as Service

        services = [s for s in list(_QueueServiceBase._instances.values()) if isinstance(s, Service)]
    except ImportError:
        return
    for service in services:
        with service._queue.mutex:
            waiting = [(item[-1], _holder_id(item)) for item in service._queue.queue if item is not None]
        request = _in_flight.get(id(service))
        if request is not None:  # a future still pending there: no slot granted yet
            waiting.append((request.future, request.holder))
        for future, holder in waiting:
            if holder in _leaving:
                _cancel_wait(future, holder)
        if request is not None:
            _cut(request)


def _cancel_wait(future: Any, holder: Optional[uuid.UUID]) -> None:
    """Cancel a wait not answered yet; known as abandoned before its task run wakes (and logs)."""
    if future.done():
        return
    _abandoned.add(str(holder))
    if not future.cancel():  # answered meanwhile: its slot was granted, its body runs
        _abandoned.discard(str(holder))


def abandoned(task_run_id: Optional[uuid.UUID]) -> bool:
    """Whether this task run's wait for a slot was cancelled (its body never ran)."""
    return task_run_id is not None and str(task_run_id) in _abandoned


def api_refused(refused: bool) -> None:
    """flows/run_loop/api_gone.py: Prefect's requests are refused from now on (the API went with
    the stop), or allowed again (a new flow call). Refused: a slot request in flight whose caller
    left is cut short, even in its retry back-off (nothing can be granted)."""
    if not refused:
        _api_refused.clear()
        return
    _api_refused.set()
    for request in list(_in_flight.values()):
        _cut(request)


def _cut(request: _Request) -> None:
    """Cancel a slot request whose caller left, on its loop, unless a try of it at a live API may
    be granted (see the module's docstring)."""

    def cut() -> None:
        if request.future.cancelled() and not request.granted and not request.task.done() \
                and (not request.on_wire or _api_refused.is_set()):
            request.task.cancel()

    if request.future.cancelled() and not request.loop.is_closed():
        request.loop.call_soon_threadsafe(cut)


def _holder_id(item: Tuple[Any, ...]) -> Optional[uuid.UUID]:
    return getattr(item[-2] if len(item) >= 2 else None, "id", None)


def _outer_cancelled() -> bool:
    """The service itself is being cancelled (its loop shuts down), not only the request we cut."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python >= 3.11
    return bool(cancelling and cancelling())
