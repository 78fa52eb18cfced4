"""The flow run of a job DB's previous owner, when that owner could not record its own end.

A run that dies (SIGKILL, a lost machine) stays `Running` in Prefect for ever: nothing is left to
report its end. The DB lock's note (jobdb/lock.py) names the holder's flow run and is removed by
a clean release, so the next run that takes the lock and finds a note knows its holder is gone:
it marks that flow run `Crashed`, with a message, if Prefect still shows it Running or Pending.

A run interrupted together with its Prefect API (a script's temporary server sits in the
script's process group: Ctrl-C stops both) cannot record `Cancelled` itself; it leaves its end in
the note instead (`record_unrecorded_end`), and the next run records it as it was: `Cancelled`.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Dict, Optional

import httpx

from flows.run_loop.api_gone import allow_prefect_requests, refuse_prefect_requests

# Prefect states a dead owner's flow run may still show, and that we may correct.
STALE_STATE_TYPES = frozenset({"RUNNING", "PENDING", "CANCELLING"})


def settle_previous_owner(holder: Optional[Dict[str, Any]], flow_run_id: Optional[str], job_db: str,
                          logger: logging.Logger) -> Optional[str]:
    """Mark the dead previous holder's flow run Crashed (or Cancelled, if it left that end in its
    note). Returns the state type set, or None. Never raises: it is a courtesy to the UI."""
    previous = (holder or {}).get("flow_run_id")
    if not previous or previous == flow_run_id:
        return None
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Crashed

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(previous)
            if run.state is None or run.state.type.name not in STALE_STATE_TYPES:
                return None
            where = f"pid {holder.get('pid')} on {holder.get('host')}" if holder.get("pid") else "its process"
            if holder.get("unrecorded_end") == "Cancelled":
                state = Cancelled(message=f"{holder.get('message') or 'interrupted'} (recorded by flow run "
                                          f"{flow_run_id}: its Prefect API had stopped with it)")
            else:
                state = Crashed(message=f"{where} ended without recording the end of this run (found by flow run "
                                        f"{flow_run_id}, which took over job DB {job_db}); its jobs are adopted")
            client.set_flow_run_state(previous, state, force=True)
            logger.warning("previous owner of this job DB, flow run %s (%s), had ended without recording it: "
                           "marked %s", previous, where, state.type.value)
            return state.type.name
    except Exception as exc:  # noqa: BLE001 - e.g. the flow run lives on another Prefect server
        logger.debug("could not settle the previous owner's flow run %s: %s", previous, exc)
        return None


def record_unrecorded_end(end: Any, flow_run_id: Optional[str]) -> Optional[Dict[str, Any]]:
    """For an interrupted run whose Prefect API is gone (the caller checked, once: each check is
    a request): what the lock note keeps for the next run."""
    if end is None or getattr(end, "reason", None) != "interrupted" or not flow_run_id:
        return None
    return {"unrecorded_end": "Cancelled", "host": socket.gethostname(), "pid": os.getpid(),
            "message": "interrupted; run the same command again to resume"}


def fail_fast_without_api(logger: logging.Logger, state: Any) -> None:
    """The Prefect API went away with the interruption (a script's temporary server sits in the
    script's process group: the terminal's Ctrl-C stops it too). Prefect's client would retry each
    remaining call for about a minute (5 retries, 2..32 s) and drain queued events and logs at
    exit, each trying to connect for seconds: the script would hang a minute and more. So the
    engine's client fails at once from here on, queued events and logs are dropped, and the flow
    object's call (`ApiGoneAware`) gives `state` (raises its RunInterrupted) instead of the
    connection error. The run's end is kept in the DB lock's note for the next run.

    Private Prefect attributes (`_client._has_connected`: ConnectError is retried only after a
    first connection; the transport pool's `_retries`; `_QueueServiceBase._instances`), used only
    here, only once the API is gone; if they change, the script exits as slowly as before, nothing
    worse."""
    logger.warning("the Prefect API is gone (it stopped with this process?): the next run of this job DB records "
                   "this run's end")
    refuse_prefect_requests()  # (already, when the watch of flows/run_loop/api_gone.py saw it go)
    _API_GONE[threading.get_ident()] = (state, state.data)  # the engine may replace state.data
    try:
        from prefect.context import SyncClientContext

        context = SyncClientContext.get()
        if context is not None:
            http = context.client._client
            http._has_connected = False
            # and no connect retries with back-off (Prefect sets 3 on its transport's pool the same way)
            http._transport_for_url(http.base_url)._pool._retries = 0
    except Exception:  # noqa: BLE001 - see above
        pass
    drop_queued_prefect_calls()
    logging.getLogger("prefect.flow_runs").addFilter(_quiet_connection_errors)


# thread -> the final state of a run interrupted with its API gone (see fail_fast_without_api)
_API_GONE: Dict[int, Any] = {}


def _quiet_connection_errors(record: logging.LogRecord) -> bool:
    """Prefect's traceback for the final state it could not record: the run already said so in one line."""
    return not (threading.get_ident() in _API_GONE and record.exc_info
                and isinstance(record.exc_info[1], httpx.TransportError))


class ApiGoneAware:
    """Mixed into the run-jobs flow object: a call whose run was interrupted together with its
    Prefect API returns / raises the run's own end (RunInterrupted) instead of Prefect's
    connection error while recording it."""

    __slots__ = ()

    @staticmethod
    def around(flow: Any, cls: type) -> Any:
        """The same flow object as `cls` (a subclass of its class; Python 3.11 refuses a
        `__class__` assignment between these layouts, so its attributes are copied)."""
        aware = object.__new__(cls)
        aware.__dict__.update(vars(flow))
        return aware

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _API_GONE.pop(threading.get_ident(), None)
        allow_prefect_requests()  # refused after an earlier call's API went (flows/run_loop/api_gone.py)
        try:
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        except Exception:
            gone = _API_GONE.pop(threading.get_ident(), None)
            if gone is None:
                raise
            drop_queued_prefect_calls()  # what the engine logged meanwhile
            stop_temporary_server()
            logging.getLogger("prefect.flow_runs").removeFilter(_quiet_connection_errors)
            state, error = gone
            if kwargs.get("return_state"):
                return state
            raise error from None


def send_queued_prefect_calls(timeout: float) -> None:
    """Send the log lines and events queued for the Prefect API now, waiting at most `timeout`:
    Prefect would send them at the interpreter's exit, after Python's own teardown, which a
    command line that has reported skips (flows/console/cli.exit_process). Private Prefect API
    (`_QueueServiceBase`: one registry for the log and event workers); if it changes, they go
    out at exit as before."""
    try:
        from prefect._internal.concurrency.services import _QueueServiceBase

        _QueueServiceBase.drain_all(timeout=timeout, at_exit=False)
    except Exception:  # noqa: BLE001 - see above
        pass


def drop_queued_prefect_calls() -> None:
    """Forget the events and log lines queued for an API that is gone, and let Prefect's exit
    stop waiting for them: it drains its queues at exit, each item trying to connect, with
    retries, for up to a minute. Private Prefect API (`_QueueServiceBase._instances`, `_queue`,
    `_done_event`), used only here and only once the API is gone; if it changes, the script
    exits as slowly as before, nothing worse.

    Prefect's concurrency service is left running: its callers (task runs waiting for a tag's
    slot) wait on each item's answer, and once the API is gone (`refuse_prefect_requests`) every
    answer is a refusal, at once. Dropped or stopped, it left them waiting (bench/stops.py --scale:
    the task runner's exit waited 16 s after the run's end)."""
    try:
        from prefect._internal.concurrency.services import FutureQueueService, _QueueServiceBase

        for service in list(_QueueServiceBase._instances.values()):
            if isinstance(service, FutureQueueService):
                continue
            with service._queue.mutex:
                service._queue.queue.clear()
            if service._loop is not None and service._done_event is not None:
                service._loop.call_soon_threadsafe(service._done_event.set)
    except Exception:  # noqa: BLE001 - see above
        pass


def stop_temporary_server() -> None:
    """Prefect's temporary server got the same Ctrl-C and is shutting down; Prefect waits up to
    5 s for it at exit. Nothing is left for it to do for this process: end it now (its SQLite
    database stays consistent). Private Prefect API (`SubprocessASGIServer._instances`)."""
    try:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(SubprocessASGIServer._instances.values()):
            process = getattr(server, "server_process", None)
            if process is not None and process.poll() is None:
                process.kill()
    except Exception:  # noqa: BLE001 - see above
        pass
