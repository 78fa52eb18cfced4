"""Tasks that work alone: given a backend instead of a registry key, a task connects itself.

Inside a run-jobs flow, tasks get a registry key and find the run's live connection
(tasks/connection_registry.py). Called from any other flow (or a script) they may instead be given the
backend itself, as prefect-dbt's tasks are given their credentials block: an `OpenEOBackend`
block (flows/config/blocks.py), or a backend config (`BackendConfig`, or its dict). The task then
connects and logs in once per process and backend, and later tasks of that process reuse the
connection. Secrets stay where they are: a block keeps its own, a config names environment
variables.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Callable, Dict, Union

from tasks.connection_registry import RUN_KEY_SEPARATOR, connection_provider_for, get_connection
from tasks.connections import ManagedConnection

# A registry key, an OpenEOBackend block, a BackendConfig or its dict.
ConnectionSource = Union[str, Any]

_CONNECTED: Dict[str, ManagedConnection] = {}
_LOCK = threading.Lock()


def connection_for(source: ConnectionSource, backend: str) -> ManagedConnection:
    """The connection a task was given: looked up by key, or built from a block or a config."""
    if isinstance(source, str):
        return get_connection(source)
    key = _identity(source, backend)
    with _LOCK:  # one login per backend and process, however many tasks start at once
        if key not in _CONNECTED:
            _CONNECTED[key] = _connect(source, backend)
        return _CONNECTED[key]


def provider_for(source: ConnectionSource, backend: str) -> Callable[[str], ManagedConnection]:
    """openeo's `connection_provider` (backend name -> connection) for a task's callback."""
    if not isinstance(source, str):
        return lambda name: connection_for(source, backend)
    name, separator, run_id = source.rpartition(RUN_KEY_SEPARATOR)
    return connection_provider_for(run_id) if separator else get_connection


def _connect(source: Any, backend: str) -> ManagedConnection:
    if callable(getattr(source, "connect", None)):  # an OpenEOBackend block builds its own connection
        return source.connect(backend)
    from flows.config.params import BackendConfig
    from flows.config.setup import connect_backend

    config = source if isinstance(source, BackendConfig) else BackendConfig.model_validate(
        {"name": backend, **dict(source)})
    return connect_backend(config)


def _identity(source: Any, backend: str) -> str:
    values = source.model_dump(mode="json") if hasattr(source, "model_dump") else dict(source)
    return json.dumps({"type": type(source).__name__, "backend": backend, **values}, sort_keys=True, default=str)
