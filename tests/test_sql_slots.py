"""Account slots and start turns through the SQL store (PostgreSQL), without a flow: what other
runs hold is counted from rows and records, never from leases; start turns are shared."""
from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import select, update

from jobdb.interface import open_store
from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.schema import accounts, runs
from jobdb.sql.slots import SqlAccountSlots, StoreStartSchedule


@pytest.fixture
def lease(monkeypatch):
    monkeypatch.setenv("OPENEO_JOBS_LEASE_SECONDS", "2")


def campaign(url: str, name: str, rows: int = 10) -> None:
    SqlDatabase.open(url, create=True).create_campaign(name, pd.DataFrame({"tile_id": [f"{name}{i}" for i in range(rows)]}))


def start(store, rows, status="running"):
    """Rows to `status` through the moves the stores allow (not_started -> creating -> status)."""
    waiting = [r for r in rows if store.value(r, "status") == "not_started"]
    store.apply({r: {"status": "creating", "backend_name": "b", "job_marker": f"m{r}"} for r in waiting})
    store.persist(force=True)
    if status != "creating":
        store.apply({r: {"status": status, "id": f"{store.campaign}-{r}"} for r in rows})
        store.persist(force=True)


def test_other_runs_and_campaigns_count_until_their_jobs_end(postgres, tmp_path, lease):
    url = postgres.database("slots_counting")
    campaign(url, "north")
    campaign(url, "south")
    a, b = open_store(url, "north", str(tmp_path)), open_store(url, "south", str(tmp_path))
    for store in (a, b):
        store.lock.acquire("test")
    slots_a, slots_b = SqlAccountSlots(a, {"b": "acct"}), SqlAccountSlots(b, {"b": "acct"})
    try:
        waiting = a.snapshot().waiting
        # a records 2 slots (intents not written yet): b sees them at once
        slots_a.claim(lambda others: (None, {"b": 2}))
        b.snapshot()
        assert slots_b.others() == {"b": 2}
        start(a, waiting[:3])  # a's rows now hold 3 (more than it recorded): the rows count
        assert slots_b.others() == {"b": 3}
        # a dies (its heartbeat stops) and its lease ends: its running jobs still hold their slots
        a.lock._stop.set()
        a.lock._thread.join()
        with a.db.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == a.run_id).values(heartbeat_at=0.0))
        assert slots_b.others() == {"b": 3}
        # another run of a's campaign adopts its rows; a job of theirs that ended frees its slot
        survivor = open_store(url, "north", str(tmp_path))
        survivor.lock.acquire("adopter")
        survivor.snapshot()
        start(survivor, waiting[:1], status="finished")
        assert SqlAccountSlots(b, {"b": "acct"}).others() == {"b": 2}
        survivor.lock.release()
    finally:
        for store in (a, b):
            store.lock.release()


def test_start_turns_are_shared_by_every_engine(postgres):
    url = postgres.database("start_turns")
    SqlDatabase.open(url, create=True)
    first = StoreStartSchedule(SqlDatabase.open(url).engine, "acct", interval=0.5)
    second = StoreStartSchedule(SqlDatabase.open(url).engine, "acct", interval=0.5)  # another "machine"
    engine = SqlDatabase.open(url).engine
    turns, next_free = [], []
    for schedule in (first, second, first, second, first):
        turns.append(schedule.reserve())
        with engine.connect() as conn:  # the turns as the database hands them out (its own clock)
            next_free.append(conn.execute(select(accounts.c.next_turn_at)
                                          .where(accounts.c.account == "acct")).scalar())
    gaps = [later - earlier for earlier, later in zip(next_free, next_free[1:])]
    assert min(gaps) >= 0.5, gaps
    # In the local clock the same turns keep their order; their spacing moves by how long each
    # answer took to come back (a loaded machine), so it is not compared to the interval here.
    assert turns == sorted(turns), turns


def test_runs_on_one_account_get_fair_shares_and_the_waiting_run_names_the_holder(postgres, tmp_path):
    """Two campaigns on one account (parallel_jobs 4): the first run took every slot while alone;
    once the second says it wants 4, the first starts nothing more until it is back at its share
    of 2, the freed slots go to the second, and the second names the run it waits for."""
    url = postgres.database("slots_fairness")
    campaign(url, "east")
    campaign(url, "west")
    first, second = open_store(url, "east", str(tmp_path)), open_store(url, "west", str(tmp_path))
    first.lock.acquire("flow-run-east")
    second.lock.acquire("flow-run-west")
    limits = {"b": 4}
    slots_first = SqlAccountSlots(first, {"b": "acct"}, limits=limits)
    slots_second = SqlAccountSlots(second, {"b": "acct"}, limits=limits)
    try:
        first.snapshot(), second.snapshot()
        seen = []

        def take_free(wanted: int):
            def decide(others):
                seen.append(others["b"])
                return None, {"b": min(wanted, limits["b"] - others["b"])}
            return decide
        slots_first.claim(take_free(4), wants={"b": 10})
        assert seen[-1] == 0  # alone: everything is free
        start(first, first.snapshot().waiting[:4])
        slots_second.claim(take_free(0), wants={"b": 10})
        assert seen[-1] == 4 and slots_second.waiting_notices() and "flow-run-east" in \
            slots_second.waiting_by_backend()["b"]
        # the first run's claim now reserves the second's fair share: it may hold 2, not 4
        slots_first.claim(lambda others: (seen.append(others["b"]), {"b": 4}), wants={"b": 10})
        assert seen[-1] == 2
        assert slots_second.others() == {"b": 4}
    finally:
        first.lock.release()
        second.lock.release()


def test_a_claim_reads_what_it_needs_in_one_statement(postgres, tmp_path):
    """The claim's transaction: the lock of the account's row, one read (live runs, their notes
    and records, active rows per account and owner), and this run's record only when it changed."""
    from tests.test_sql_cycle_cost import statements

    url = postgres.database("slots_statements")
    campaign(url, "one")
    store = open_store(url, "one", str(tmp_path))
    store.lock.acquire("flow-run-one")
    slots = SqlAccountSlots(store, {"b": "acct"}, limits={"b": 4})
    try:
        slots.claim(lambda others: (None, {"b": 2}), wants={"b": 5})  # the first claim makes the account's row
        for holding, writes in ((2, 0), (3, 1)):
            with statements(store.db.engine) as seen:
                slots.claim(lambda others: (None, {"b": holding}), wants={"b": 5})
            assert len(seen) == 2 + writes, seen
            assert "FOR UPDATE" in seen[0] and "UNION ALL" in seen[1], seen
            assert sum("INSERT INTO run_accounts" in s for s in seen) == writes, seen
        assert SqlAccountSlots(open_store(url, "one", str(tmp_path)), {"b": "acct"}).others() == {"b": 3}
    finally:
        store.lock.release()


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_waiting_for_slots_another_run_holds_starts_no_more_in_later_cycles(postgres, tmp_path):
    """Two runs, two campaigns of one PostgreSQL database, one account (parallel_jobs 3). Run A
    holds 2 slots with jobs that stay queued (the simulator runs none yet); run B takes the 1 slot
    left and then waits, cycle after cycle: a cycle that skipped its claim while it could start
    something would plan as if A held nothing and start 2 more. B's queued row is written by a
    later cycle than its claim, in the same write as anything that cycle starts."""
    import threading

    from flows.run_jobs import run_jobs
    from simulator import start_simulator
    from tests.flow_helpers import backend, fast_config, let_held_jobs_run_and_join
    from tests.test_interruptions import wait_for

    url = postgres.database("slots_waiting_runs")
    campaign(url, "a", rows=2)
    campaign(url, "b", rows=6)
    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3, max_running_per_user=0))
    db = SqlDatabase.open(url)
    errors, results = {}, {}

    def statuses(name):
        return db.export(name)["status"].value_counts().to_dict()

    def run(name):
        try:
            results[name] = run_jobs(job_db=url, campaign=name, backends=[backend(f"sim-{name}", sim, 3)],
                                     start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3,
                                     root_dir=str(tmp_path / name))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[name] = exc

    threads = {name: threading.Thread(target=run, args=(name,), daemon=True) for name in ("a", "b")}
    try:
        threads["a"].start()
        wait_for(lambda: statuses("a").get("queued", 0) == 2 or errors, 600, "run A's 2 jobs queued")
        threads["b"].start()
        # B's starts have settled (nothing being created or started): whatever B took is in the rows
        wait_for(lambda: statuses("b").get("queued", 0) >= 1 and not set(statuses("b"))
                 & {"creating", "queued_for_start"} or errors, 600, "run B to start its share and wait")
        assert not errors, errors
        assert statuses("b") == {"queued": 1, "not_started": 5}
        assert sim.counters()["max_active_per_user"]["alice"] == 3
        let_held_jobs_run_and_join(sim, threads)  # now the jobs run and both runs finish
    finally:
        sim.configure(max_running_per_user=None)
        sim.stop()
    assert not errors, errors
    assert statuses("a") == {"finished": 2} and statuses("b") == {"finished": 6}
    counters = sim.counters()
    assert counters["jobs_total"] == 8 and counters["duplicate_titles"] == {}
    assert counters["max_active_per_user"]["alice"] == 3  # never more, for the whole of both runs
