"""Once the Prefect API has stopped with this run's interruption, Prefect's clients fail at once.

A script's Ctrl-C reaches Prefect's temporary server too (it sits in the script's process group).
Every Prefect client in the process then retries each call for about a minute (5 retries, 2..30 s
apart): the task runs still in flight (start workers, polls, downloads) and Prefect's concurrency
service, which takes the task runs' tag-slot requests one at a time, each with its own minute. The
task runners' exit waits for all of them: a big run kept printing `stopping` for minutes
(`bench/stops.py --scale 2500`: 20 start workers, 2 backends x 200 slots).

So from the stop on, a watch tries the temporary server's port; once it is closed,
every request of a Prefect client fails at once with `PrefectApiGone`, a transport error that
Prefect's client does not retry, and those task runs end in milliseconds (their rows are picked up
by the next run, as after any interruption). Only with Prefect's temporary server: a server named
by PREFECT_API_URL (the CLI's own, a worker's) does not get the terminal's Ctrl-C. The refusal holds
until the next flow call of this process (`allow_prefect_requests`), so Prefect's exit handlers do
not retry either.

Mechanism: `httpx.Client.send` / `httpx.AsyncClient.send`, wrapped once, refuse for Prefect's client
classes only, and so does the events client's websocket connect (`PrefectEventsClient._reconnect`);
private Prefect API: if it changes, the stop is as slow as before, nothing worse. Prefect's retry loop calls the parent class's `send` it looked up when the request
began, so the wrapper is installed when such a run starts, not at the stop; a loop already asleep
in its back-off wakes to a refusal (the first back-off is ~2 s).
"""
from __future__ import annotations

import contextvars
import functools
import logging
import threading
import socket
import urllib.parse
import urllib.request
from typing import Callable

import httpx

from flows.run_loop import slot_waits
from flows.run_loop.interrupts import StopSignal

# After the stop, until the run's end, the watch tries the temporary server's port this often. A
# server that got the same signal closes its port at once; one that stays up (a SIGINT to this
# process alone) keeps it open, slow or not, and nothing is refused.
PORT_CHECK_SECONDS = 0.25


class PrefectApiGone(httpx.TransportError):
    """A Prefect API request not sent: the API stopped with this run's interruption."""


_refusing = threading.Event()
_installed = False
_install_lock = threading.Lock()


def prefect_requests_refused() -> bool:
    return _refusing.is_set()


def allow_prefect_requests() -> None:
    """A new flow call: its Prefect API may be a new temporary server."""
    _refusing.clear()
    slot_waits.api_refused(False)
    for handler in logging.getLogger("prefect").handlers:
        handler.removeFilter(_quiet_refusals)


def refuse_prefect_requests() -> None:
    _install()
    _refusing.set()
    slot_waits.api_refused(True)  # a slot request in its retry back-off whose task run left: cut short
    for handler in logging.getLogger("prefect").handlers:  # the task runs' tracebacks, one per refused call
        handler.addFilter(_quiet_refusals)


def watch_api_after_stop(stop: StopSignal) -> Callable[[], None]:
    """When this run talks to Prefect's temporary server: from the stop on, refuse Prefect's
    requests once that server is gone. Returns the call that ends the watch (the run's end)."""
    from prefect.settings import PREFECT_API_URL

    ended = threading.Event()
    if PREFECT_API_URL.value():
        return ended.set
    _install()
    context = contextvars.copy_context()  # the flow's Prefect settings (its temporary server's URL)

    def watch() -> None:
        from prefect.client.orchestration import get_client

        api = urllib.parse.urlsplit(str(get_client(sync_client=True).api_url))
        while not stop.event.wait(1.0):
            if ended.is_set():
                return
        while not ended.is_set():
            if _port_closed(api.hostname or "127.0.0.1", api.port or 80):
                refuse_prefect_requests()
                return
            ended.wait(PORT_CHECK_SECONDS)

    threading.Thread(target=lambda: context.run(watch), name="prefect-api-watch", daemon=True).start()
    return ended.set


def api_went_with_the_stop(timeout: float = 1.0) -> bool:
    """Whether the Prefect API this process talks to stopped with the run's interruption. Only
    Prefect's temporary server can (it sits in a script's process group): with PREFECT_API_URL set
    (the CLI's own server, a worker's, any `prefect server`) no request is made, each is one more
    second of a stop on a loaded machine (bench/stops.py); else one quick health check, no retries."""
    try:
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return False
        from prefect.client.orchestration import get_client

        url = str(get_client(sync_client=True).api_url).rstrip("/")
        # urllib, not httpx.get: a plain HTTP request, without building an SSL context (~50 ms of CPU)
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as answer:
            return answer.status != 200
    except Exception:  # noqa: BLE001 - not there
        return True


def _port_closed(host: str, port: int) -> bool:
    """Nothing listens there any more (refused), as opposed to a slow server (which accepts)."""
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # a timeout: a loaded machine, not a server gone
        return False
    return False


def _is_prefect_client(client: object) -> bool:
    from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient

    return isinstance(client, (PrefectHttpxAsyncClient, PrefectHttpxSyncClient))


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

        @functools.wraps(sync_send)
        def send(self, request, *args, **kwargs):
            if _refusing.is_set() and _is_prefect_client(self):
                raise PrefectApiGone("the Prefect API stopped with this run", request=request)
            return sync_send(self, request, *args, **kwargs)

        @functools.wraps(async_send)
        async def asend(self, request, *args, **kwargs):
            if _refusing.is_set() and _is_prefect_client(self):
                raise PrefectApiGone("the Prefect API stopped with this run", request=request)
            return await async_send(self, request, *args, **kwargs)

        httpx.Client.send, httpx.AsyncClient.send = send, asend

        # Events (task-run states, job events) go over a websocket: each one tries 11 connections, 1 s
        # apart after the third, before the next queued one is tried.
        from prefect.events.clients import PrefectEventsClient

        reconnect = PrefectEventsClient._reconnect

        @functools.wraps(reconnect)
        async def refusing_reconnect(self):
            if _refusing.is_set():
                raise PrefectApiGone("the Prefect API stopped with this run")
            return await reconnect(self)

        PrefectEventsClient._reconnect = refusing_reconnect


def _quiet_refusals(record: logging.LogRecord) -> bool:
    """Prefect's tracebacks of calls refused here: the run says in one line that its API is gone."""
    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
        if isinstance(error, PrefectApiGone):
            return False
        error = error.__cause__ or error.__context__
    return True
