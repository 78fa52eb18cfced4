"""Requests on the wire that an interrupted run cuts instead of waiting for their answer.

A stop waits a short grace for the tasks in flight, persists the job DB and ends the run. A task
still inside an HTTP request then held the process: its thread is joined by the task runner and
again at interpreter exit, until the backend answered or the request timed out (a start takes
~14 s on CDSE, the request timeout is a minute, then the retries' back-off). Its answer is not
wanted any more: the rows are where a SIGKILL would leave them (a create's row `creating` with its
marker, a start's `queued_for_start` with its job id), which the next run resolves by lookup.

So each connection pool of a run's session is tracked, and `cut()` shuts down the sockets of that
session: a blocked read wakes at once with "connection aborted", urllib3 does not retry on a cut
pool (tasks/health.py `ReportingRetry`), and the next request of the session fails at once.
"""
from __future__ import annotations

import socket
import threading
import weakref
from typing import Any

import requests
import urllib3
from urllib3.exceptions import MaxRetryError


class RunStopped(requests.ConnectionError):
    """A request of a run that was interrupted: not sent, its answer is not wanted."""


class CuttablePoolManager(urllib3.PoolManager):
    """urllib3's PoolManager that remembers the connections of its pools, so a stop can cut them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._pools: "weakref.WeakSet[Any]" = weakref.WeakSet()  # urllib3's own container has no safe iteration
        self._lock = threading.Lock()
        self.is_cut = False

    def _new_pool(self, scheme, host, port, request_context=None):
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.is_cut = self.is_cut  # read by ReportingRetry: no resend on a cut pool
        with self._lock:
            self._pools.add(pool)
        new_conn = pool._new_conn

        def tracked_new_conn():
            if self.is_cut:  # a resend on a fresh connection: refused without a try (no retry on it)
                raise MaxRetryError(pool, None, RunStopped("the run was interrupted"))
            conn = new_conn()
            with self._lock:
                self._connections.add(conn)
            connect = conn.connect

            def connect_unless_cut():  # a cut that came while this connected found no socket to cut
                connect()
                if self.is_cut:
                    _shut(conn.sock)

            conn.connect = connect_unless_cut
            return conn

        pool._new_conn = tracked_new_conn
        return pool

    def cut(self) -> int:
        """Shut down every socket of this manager's connections, idle or in use; the number cut."""
        self.is_cut = True
        with self._lock:
            pools, connections = list(self._pools), list(self._connections)
        for pool in pools:
            pool.is_cut = True
        return sum(_shut(getattr(conn, "sock", None)) for conn in connections)


def _shut(sock: Any) -> bool:
    """Shut a connection's socket down for both directions: a thread blocked reading it wakes."""
    if sock is None:
        return False
    try:
        # the plain socket's shutdown, also under TLS: the reading thread owns the TLS state
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return True
    except OSError:
        return False  # already closed


def refuse_if_cut(poolmanager: Any) -> None:
    """Raise `RunStopped` for a new request of a session whose run was interrupted."""
    if getattr(poolmanager, "is_cut", False):
        raise RunStopped("the run was interrupted")


def cut_session(session: requests.Session) -> int:
    """Cut the requests of a session's tracked pools (an interrupted run's connection); the sockets cut."""
    managers = {id(a.poolmanager): a.poolmanager for a in session.adapters.values()
                if isinstance(getattr(a, "poolmanager", None), CuttablePoolManager)}
    return sum(manager.cut() for manager in managers.values())
