"""The connection registry: one key per run and backend, so two runs in one process that name a
backend alike keep their own connections; a plain name still finds a backend used by one run."""
from __future__ import annotations

import pytest

from tasks.connection_registry import (
    connection_key,
    connection_provider_for,
    get_connection,
    register_connection,
    unregister_connection,
)
from tasks.connections import ManagedConnection
from tests.test_simulator import make_sim  # noqa: F401 - fixture


def test_two_runs_same_backend_name_keep_their_connections(make_sim):
    sims = [make_sim(), make_sim()]
    first, second = (ManagedConnection(s.url) for s in sims)
    key_a, key_b = connection_key("run-a", "cdse"), connection_key("run-b", "cdse")
    register_connection(key_a, first)
    try:
        assert get_connection("cdse") is first  # one run uses "cdse": the plain name finds it
        register_connection(key_b, second)
        assert get_connection(key_a) is first and get_connection(key_b) is second
        assert connection_provider_for("run-b")("cdse") is second  # openeo-style connection_provider
        with pytest.raises(KeyError, match="2 runs"):
            get_connection("cdse")
        unregister_connection(key_a)
        assert get_connection("cdse") is second
    finally:
        unregister_connection(key_a)
        unregister_connection(key_b)
    with pytest.raises(KeyError, match="No connection registered"):
        get_connection("cdse")


def test_plain_names_still_register(make_sim):
    connection = ManagedConnection(make_sim().url)
    register_connection("plain", connection)
    try:
        assert get_connection("plain") is connection
    finally:
        unregister_connection("plain")
