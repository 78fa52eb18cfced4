"""The connections of this process, registered per run and looked up by a key.

Tasks never receive tokens or passwords as parameters (Prefect would show task inputs in
the UI and hash them into cache keys): they receive a registry key (`connection_key(run, name)`,
or just the backend name) and look the live connection up here. The flow registers the
connections before it submits any task.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Dict

from tasks.connections import ManagedConnection


@dataclass
class _Registry:
    connections: Dict[str, ManagedConnection] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_REGISTRY = _Registry()
RUN_KEY_SEPARATOR = "@"


def connection_key(run_id: str, backend_name: str) -> str:
    """The registry key of a backend's connection in one run: two runs in one process that both
    name a backend "cdse" keep their own connections."""
    return f"{backend_name}{RUN_KEY_SEPARATOR}{run_id}"


def register_connection(key: str, connection: ManagedConnection) -> None:
    """Register under `key`: a `connection_key(run, name)`, or a plain backend name."""
    with _REGISTRY.lock:
        _REGISTRY.connections[key] = connection


def unregister_connection(key: str) -> None:
    with _REGISTRY.lock:
        _REGISTRY.connections.pop(key, None)


def get_connection(key: str) -> ManagedConnection:
    """The live connection registered under `key`; a plain backend name also finds the connection
    of the only run in this process that uses that backend (openeo-style `connection_provider(name)`)."""
    with _REGISTRY.lock:
        connection = _REGISTRY.connections.get(key)
        if connection is not None:
            return connection
        runs = {k: c for k, c in _REGISTRY.connections.items() if k.rpartition(RUN_KEY_SEPARATOR)[0] == key}
    if len(runs) == 1:
        return next(iter(runs.values()))
    if runs:
        raise KeyError(f"backend {key!r} is used by {len(runs)} runs in this process: look its connection up by "
                       f"connection_key(run_id, {key!r})")
    raise KeyError(f"No connection registered for backend {key!r}")


def connection_provider_for(run_id: str) -> Callable[[str], ManagedConnection]:
    """openeo's `connection_provider(backend_name)` for the callbacks of one run."""
    return lambda backend_name: get_connection(connection_key(run_id, backend_name))
