"""Two flow runs at once, two job DBs, one backend account: together they stay within its slots."""
from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from flows.params import BackendConfig
from flows.run_jobs import run_jobs
from flows.slots import JobSlots, lease_file, limit_name
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config, make_db

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def sim():
    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.0))
    yield sim
    sim.stop()


def test_two_runs_share_the_account_slots(sim, tmp_path):
    dbs = [make_db(tmp_path / f"jobs_{k}.parquet", 8) for k in range(2)]
    # Different backend names (as two users might call it), the same account: one shared limit.
    configs = [backend("sim-a", sim, 3), backend("sim-b", sim, 3)]
    assert limit_name(BackendConfig(**configs[0])) == limit_name(BackendConfig(**configs[1]))
    results, errors = {}, {}

    def run(k):
        try:
            results[k] = run_jobs(job_db=str(dbs[k]), backends=[configs[k]],
                                  start_job="flows.demo_callbacks:start_job", poll_interval_seconds=0.3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[k] = exc

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not any(t.is_alive() for t in threads), "flow runs did not end in time"
    elapsed = time.monotonic() - t0
    assert not errors, errors
    for k in range(2):
        df = pd.read_parquet(dbs[k])
        assert (df["status"] == "finished").all(), df["status"].value_counts()
    counters = sim.counters()
    max_active = max(counters["max_active_per_user"].values())
    print(f"two runs x 8 jobs: {elapsed:.1f} s, max active jobs of the account: {max_active}")
    assert counters["jobs_total"] == 16
    assert max_active <= 3
    # Without the shared limit each run would use its own 3 slots: both must have had jobs active
    # at once only within the 3 (the runs overlapped, which the limit must have held back).
    assert max_active == 3
    # Leases are handed from an ended job to the next one of the same run, not taken anew.
    leases = [results[k]["slot_leases"] for k in range(2)]
    assert sum(l["acquired"] for l in leases) < 16 and sum(l["reused"] for l in leases) > 0, leases


def test_slots_denied_when_taken_and_freed_on_release(sim):
    """The lease bookkeeping itself: a second holder gets no slot until the first gives one back."""
    config = {n: BackendConfig(**backend(n, sim, 2)) for n in ("x",)}
    first, second = JobSlots(config, 60), JobSlots(config, 60)
    try:
        assert first.grant({"x": 5}, waiting=5) == {"x": 2}
        first.bind([(0, "x"), (1, "x")])
        assert second.grant({"x": 2}, waiting=2) == {"x": 0}
        first.sync({0: "x"})  # row 1 ended: its lease is spare, for the next row of this run
        assert first.grant({"x": 1}, waiting=1) == {"x": 1}
        first.bind([(2, "x")])
        assert first.counters["acquired"] == 2 and first.counters["reused"] >= 1
        assert second.grant({"x": 2}, waiting=2) == {"x": 0}
        first.sync({0: "x"})  # row 2 ended and nothing waits: the slot goes back to the server
        first.bind([])
        assert second.grant({"x": 2}, waiting=2) == {"x": 1}
        second.bind([(7, "x")])
        first.sync({})
        first.bind([])
        assert second.grant({"x": 2}, waiting=2) == {"x": 1}
        second.bind([])  # unused slots are released again
        assert first.grant({"x": 2}, waiting=2) == {"x": 1}  # row 7 of `second` still holds one
        first.bind([])
    finally:
        first.close()
        second.close()


def test_resumed_run_adopts_the_leases_of_a_crashed_one(sim, tmp_path):
    """A run that died leaves its leases in the lease file; the next run of that DB renews them
    instead of waiting ~a minute for them to expire, and releases those of rows that ended."""
    config = {"x": BackendConfig(**backend("x", sim, 3))}
    db = tmp_path / "jobs.parquet"
    crashed = JobSlots(config, 60, job_db=db)
    assert crashed.grant({"x": 3}, waiting=3) == {"x": 3}
    crashed.bind([(0, "x"), (1, "x"), (2, "x")])
    crashed._renewer.shutdown()  # dies without giving anything back
    assert lease_file(db).exists()

    other = JobSlots(config, 60)  # another DB on the same account: no slot free
    resumed = JobSlots(config, 60, job_db=db)
    try:
        assert other.grant({"x": 1}, waiting=1) == {"x": 0}
        resumed.sync({0: "x", 1: "x"})  # rows 0 and 1 still active, row 2 ended meanwhile
        assert resumed.counters["adopted"] == 2 and resumed.counters["acquired"] == 0
        assert other.grant({"x": 2}, waiting=2) == {"x": 1}  # row 2's slot came back at once
        other.bind([])
        resumed.sync({})
        resumed.bind([])
        assert other.grant({"x": 3}, waiting=3) == {"x": 3}
        other.bind([])
    finally:
        resumed.close()
        other.close()
    assert not lease_file(db).exists()
