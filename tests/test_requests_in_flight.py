"""Cutting an interrupted run's requests on the wire (tasks/requests_in_flight.py): a request the
server never answers ends at once when cut, with no resend on a fresh connection, and the pool
refuses new requests afterwards. A real loopback server that accepts and never answers."""
from __future__ import annotations

import socket
import threading

import pytest
from urllib3.exceptions import MaxRetryError

from tasks.requests_in_flight import CuttablePoolManager
from tasks.retry_policy import BudgetRetry


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never answers; yields (url, accepted list, event)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted, first = [], threading.Event()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.recv(1024)  # the request has been sent: the client waits for its answer
            first.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/jobs", accepted, first
    listener.close()
    for conn in accepted:
        conn.close()
    thread.join(5)


def test_a_cut_ends_a_request_that_waits_for_its_answer_without_resending_it(silent_server):
    url, accepted, first = silent_server
    manager = CuttablePoolManager(num_pools=2, maxsize=2)
    # an idempotent GET with a budget of resends on read errors, and a timeout far past the test
    retry = BudgetRetry(total=5, read=5, connect=5, backoff_factor=0.5)
    errors = []

    def get() -> None:
        try:
            manager.request("GET", url, retries=retry, timeout=300)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    waiting = threading.Thread(target=get, daemon=True)
    waiting.start()
    assert first.wait(30)  # the request is on the wire
    assert manager.cut() >= 1
    waiting.join(30)
    assert not waiting.is_alive(), "the cut request still waited for its answer"
    assert len(errors) == 1 and isinstance(errors[0], MaxRetryError), errors
    assert len(accepted) == 1  # not resent on a fresh connection

    with pytest.raises(MaxRetryError):  # a new request of the cut pool: refused, no connection made
        manager.request("GET", url, retries=retry, timeout=300)
    assert len(accepted) == 1
