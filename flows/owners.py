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
from typing import Any, Dict, Optional

import httpx

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
    """For an interrupted run whose Prefect API is gone: what the lock note keeps for the next run."""
    if end is None or getattr(end, "reason", None) != "interrupted" or not flow_run_id or api_reachable():
        return None
    return {"unrecorded_end": "Cancelled", "host": socket.gethostname(), "pid": os.getpid(),
            "message": "interrupted; run the same command again to resume"}


def api_reachable(timeout: float = 1.0) -> bool:
    """One quick health check of the API this process talks to (no retries: it is either there or not)."""
    try:
        from prefect.client.orchestration import get_client

        url = str(get_client(sync_client=True).api_url).rstrip("/")
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except Exception:  # noqa: BLE001 - not there
        return False


def fail_fast_without_api(logger: logging.Logger) -> None:
    """The Prefect API went away with the interruption (a script's temporary server gets the same
    Ctrl-C): Prefect's client would retry each remaining call with back-off for about a minute
    (5 retries, 2..32 s), so the process would hang that long after the stop. From here on, in
    this thread, calls fail at once; the run's end is kept in the DB lock's note for the next run."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    logger.warning("the Prefect API is gone (stopped with this process?): the end of this run is recorded by the "
                   "next run of this job DB")
    temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}).__enter__()  # left open: the API is gone for good
    drop_queued_prefect_calls()


def drop_queued_prefect_calls() -> None:
    """Forget the events and log lines still queued for the API that is gone: Prefect drains
    them at exit, each one trying to connect for seconds (a minute and more for a run's worth).
    Private Prefect API (`QueueService._instances`), used only here and only once the API is
    gone; if it changes, the process exits as slowly as before, nothing worse."""
    try:
        from prefect._internal.concurrency.services import _QueueServiceBase

        for service in list(_QueueServiceBase._instances.values()):
            with service._queue.mutex:
                service._queue.queue.clear()
    except Exception:  # noqa: BLE001 - see above
        pass
