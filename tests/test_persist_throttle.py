"""Both stores write through one throttle (jobdb/persist_throttle.py): a forced write at once, an
unforced one only when the interval since the last write is over, and `persist_due_at` names that
moment while changes wait. The clock is a fake one the test moves: nothing here waits."""
from __future__ import annotations

import pandas as pd
import pytest

import jobdb.persist_throttle as throttle_module
from jobdb import JobDatabase
from jobdb.interface import open_store
from jobdb.sql.campaign import SqlDatabase


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def file_store(tmp_path):
    db = tmp_path / "jobs.csv"
    JobDatabase.create(db, pd.DataFrame({"tile_id": ["A", "B"]}))
    return open_store(str(db))


def sql_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'campaigns.db'}"
    SqlDatabase.open(url, create=True).create_campaign("eu", pd.DataFrame({"tile_id": ["A", "B"]}))
    store = open_store(url, "eu", str(tmp_path))
    store.lock.acquire("one")
    store.snapshot()  # claims the waiting rows
    return store


@pytest.mark.parametrize("make", [file_store, sql_store], ids=["file", "sql"])
def test_writes_are_throttled_unless_forced_and_their_due_time_is_told(tmp_path, monkeypatch, make):
    clock = Clock()
    monkeypatch.setattr(throttle_module, "time", clock)
    store = make(tmp_path)
    try:
        assert store.persist_due_at() is None and not store.persist(force=True)  # nothing changed: no write
        store.apply({0: {"status": "creating", "backend_name": "a", "job_marker": "m0"}})
        assert store.persist(force=True) and store.persist_count == 1
        store.apply({0: {"status": "created", "id": "j-0"}})
        clock.now += 0.5
        assert not store.persist()  # within the interval (1 s) of the last write
        assert store.persist_due_at() == pytest.approx(1001.0)
        clock.now += 0.5
        assert store.persist() and store.persist_count == 2
        assert store.persist_due_at() is None and not store.persist(force=True)
        store.apply({1: {"status": "creating", "backend_name": "a", "job_marker": "m1"}})
        assert store.persist(force=True) and store.persist_count == 3  # intents: at once
    finally:
        if make is sql_store:
            store.lock.release()
