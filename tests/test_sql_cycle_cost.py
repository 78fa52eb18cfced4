"""What a cycle costs the SQL store (PostgreSQL): statements counted, not timed (bench/store.py times
them). A cycle's writes are one statement for all its rows and their counts; the cycle's
counts and the progress table come from `status_counts`, which always equals the rows; nothing on
the cycle's path scans the campaign. Also: a store of schema v2 is upgraded in place."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List

import pandas as pd
import pytest
from sqlalchemy import event, func, inspect, select, text

from jobdb.interface import open_store
from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.openeo_db import SqlJobDatabase
from jobdb.sql.schema import VERSION, jobs


def campaign(url: str, rows: int, name: str = "eu") -> None:
    df = pd.DataFrame({"tile_id": [f"T{i:04d}" for i in range(rows)], "year": [2020 + i % 3 for i in range(rows)]})
    SqlDatabase.open(url, create=True).create_campaign(name, df)


@contextmanager
def statements(engine) -> Iterator[List[str]]:
    seen: List[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001 - SQLAlchemy's signature
        seen.append(("MANY " if executemany else "") + " ".join(statement.split()))
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def counted_from_rows(url: str, name: str = "eu"):
    with SqlDatabase.open(url).engine.connect() as conn:
        rows = conn.execute(select(func.coalesce(jobs.c.backend_name, "(none)"), jobs.c.status, func.count())
                            .where(jobs.c.campaign == name).group_by(jobs.c.backend_name, jobs.c.status)).all()
    out = {}
    for backend, status, n in rows:
        out.setdefault(backend, {})[status] = n
    return out


def test_a_cycle_writes_its_rows_in_one_statement_and_reads_no_whole_campaign(postgres, tmp_path):
    url = postgres.database("cycle_cost")
    campaign(url, 500)
    store = open_store(url, "eu", str(tmp_path))
    store.waiting_batch = 100
    store.lock.acquire("one")
    try:
        store.snapshot()  # the first claim of waiting rows
        with statements(store.db.engine) as seen:
            snapshot = store.snapshot()
            rows = list(snapshot.waiting)
            assert len(rows) == 100
            store.apply({r: {"status": "creating", "backend_name": "a" if r % 2 else "b", "job_marker": f"m{r}",
                             "attempt": 1} for r in rows})
            store.persist(force=True)
            by_backend = store.status_by_backend()
        writes = [s for s in seen if "UPDATE jobs SET status" in s or "INSERT INTO status_counts" in s]
        assert len(writes) == 1, writes  # the rows and their counts: one statement, one round trip
        assert "UPDATE jobs SET" in writes[0] and "INSERT INTO status_counts" in writes[0], writes[0]
        assert len(seen) == 3, seen  # counts (the batch is full: no claim), the write, the progress table's counts
        scans = [s for s in seen if "FROM jobs" in s and "GROUP BY" in s]
        assert scans == [], scans  # counts come from status_counts, never from the campaign's rows
        with statements(store.db.engine) as again:  # another batch size, the same statement (compiled once)
            rows = list(store.snapshot().waiting)[:37]
            store.apply({r: {"status": "creating", "backend_name": "a", "job_marker": f"m{r}"} for r in rows})
            store.persist(force=True)
        assert [s for s in again if "UPDATE jobs SET status" in s] == writes
        assert by_backend == {"(none)": {"not_started": 400}, "a": {"creating": 50}, "b": {"creating": 50}}
        assert store.status_by_backend() == counted_from_rows(url)
    finally:
        store.lock.release()


def test_counts_follow_every_kind_of_write(postgres, tmp_path):
    """Claims, a cycle's writes, a row moved to another backend, --retry-failed, openeo's persist."""
    url = postgres.database("counts_follow")
    campaign(url, 12)
    store = open_store(url, "eu", str(tmp_path))
    store.lock.acquire("one")
    try:
        waiting = list(store.snapshot().waiting)
        store.apply({r: {"status": "creating", "backend_name": "a", "job_marker": f"m{r}"} for r in waiting[:6]})
        store.persist(force=True)
        store.apply({r: {"status": "running", "id": f"j{r}"} for r in waiting[:6]})
        store.persist(force=True)
        store.apply({waiting[0]: {"status": "error", "error_message": "boom"},
                     waiting[1]: {"status": "running", "backend_name": "b"}})
        store.persist(force=True)
        assert store.status_by_backend() == counted_from_rows(url)
        store.track_retries, store.max_attempts = True, 3
        store.apply({waiting[0]: {"results_status": "error logs saved"}})
        store.persist(force=True)
    finally:
        store.lock.release()
    assert open_store(url, "eu", str(tmp_path)).retry_failed_rows() == 1
    assert store.status_by_backend() == counted_from_rows(url)
    db = SqlJobDatabase(url, "eu")
    frame = db.get_by_indices([2, 3])
    frame["status"] = ["finished", "finished"]
    frame["backend_name"] = ["c", "c"]
    db.persist(frame)
    assert store.status_by_backend() == counted_from_rows(url)
    assert store.snapshot().counts == {s: n for s, n in pd.Series(
        SqlDatabase.open(url).export("eu")["status"]).value_counts().items()}


def test_a_v2_store_is_upgraded_with_counts_per_backend(postgres, tmp_path):
    url = postgres.database("upgrade_v2")
    campaign(url, 6)
    db = SqlDatabase.open(url)
    with db.engine.begin() as conn:  # the tables as release v2 left them
        conn.execute(text("UPDATE jobs SET backend_name = 'a', status = 'finished' WHERE row_index < 2"))
        conn.execute(text("DROP TABLE status_counts"))
        conn.execute(text("CREATE TABLE status_counts (campaign VARCHAR(200), status VARCHAR(32), n INTEGER NOT NULL, "
                          "PRIMARY KEY (campaign, status))"))
        conn.execute(text("INSERT INTO status_counts VALUES ('eu', 'finished', 2), ('eu', 'not_started', 4)"))
        conn.execute(text("CREATE INDEX jobs_campaign_owner ON jobs (campaign, owner)"))  # v4 drops it
        conn.execute(text("UPDATE schema_version SET version = 2"))
    store = open_store(url, "eu", str(tmp_path))
    assert store.status_by_backend() == {"a": {"finished": 2}, "(none)": {"not_started": 4}}
    with store.db.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalar() == VERSION
        assert "jobs_campaign_owner" not in {i["name"] for i in inspect(conn).get_indexes("jobs")}


@pytest.mark.parametrize("rows", [2, 1500])
def test_batches_of_any_size_keep_only_the_rows_this_run_holds(postgres, tmp_path, rows):
    """More rows than one statement takes (chunks), and a row adopted by another run meanwhile."""
    url = postgres.database(f"batch_{rows}")
    campaign(url, rows)
    store = open_store(url, "eu", str(tmp_path))
    store.waiting_batch = rows
    store.lock.acquire("one")
    try:
        waiting = list(store.snapshot().waiting)
        assert len(waiting) == rows
        with store.db.engine.begin() as conn:  # another run took the last row (this run's lease had ended)
            conn.execute(jobs.update().where(jobs.c.row_index == waiting[-1]).values(owner="someone-else"))
        store.apply({r: {"status": "creating", "backend_name": "a", "job_marker": f"m{r}", "costs": None}
                     for r in waiting})
        store.persist(force=True)
        assert store.lost == {waiting[-1]}
    finally:
        store.lock.release()
    df = SqlDatabase.open(url).export("eu")
    assert (df["status"].iloc[:-1] == "creating").all() and df["status"].iloc[-1] == "not_started"
    assert df["job_marker"].iloc[:-1].tolist() == [f"m{r}" for r in waiting[:-1]]
    assert store.status_by_backend() == counted_from_rows(url)
