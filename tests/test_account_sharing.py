"""Two flow runs on one account share it fairly (jobdb/fair_shares.py), read from the simulator
over HTTP: the run that comes second gets slots while the first still has rows to start, and
together they never exceed the account's `parallel_jobs`."""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Dict, List

import pandas as pd
import pytest

from tasks.accounts import account_dir, origin
from flows.run_jobs import run_jobs
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config, make_db

PARALLEL = 4
ROWS_A, ROWS_B = 12, 8


def wait_for(condition, what: str, timeout: float = 600.0) -> None:
    """Wait for an event of the runs (not for a time): `condition()` becomes true; the timeout
    only bounds a hang, generous for a loaded machine."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ledger(sim) -> List[dict]:
    folder = account_dir(f"{origin(sim.url)}~alice")
    entries = []
    for path in folder.glob("*.slots.json"):
        try:
            entries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced by its owner
    return entries


@pytest.fixture
def gated_sim():
    """Jobs queue but do not run until the test lets some (`runs_left=N`) or all (`None`) run."""
    sim = start_simulator(fast_config(queue_time=0.1, run_time=1.0, runs_left=0))
    yield sim
    sim.stop()


@pytest.mark.usefixtures("prefect_harness")
def test_two_runs_on_one_account_both_progress_at_once(gated_sim, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    sim = gated_sim
    t0 = time.monotonic()
    dbs = {"a": make_db(tmp_path / "jobs_a.parquet", ROWS_A),  # job titles "composite T000 2020", ...
           "b": make_db(tmp_path / "jobs_b.parquet", ROWS_B, tile_id=[f"B{i:03d}" for i in range(ROWS_B)])}
    configs = {"a": backend("sim-a", sim, PARALLEL), "b": backend("sim-b", sim, PARALLEL)}
    errors: Dict[str, BaseException] = {}

    def run(k: str) -> None:
        try:
            run_jobs(job_db=str(dbs[k]), backends=[configs[k]], start_job="flows.tiling.demo_callbacks:start_job",
                     poll_interval_seconds=0.3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[k] = exc

    threads = {k: threading.Thread(target=run, args=(k,), name=f"run-{k}") for k in dbs}
    threads["a"].start()
    # A takes every slot while nothing can run
    wait_for(lambda: sim.counters()["active_per_user"].get("alice", 0) == PARALLEL, "run A to fill the account")
    threads["b"].start()
    # B has asked for slots (its want is in the ledger) while A holds them all
    wait_for(lambda: any(e["holding"] == 0 and e["wants"] > 0 for e in ledger(sim)), "run B to ask for slots")

    # A's first jobs run and end, freeing slots; every later job stays queued (active) for now, so
    # neither run can end a job before B has one: the overlap is an event, not a race that a B
    # slowed by the machine (its create task started late) would lose
    sim.configure(runs_left=PARALLEL)

    def not_ended(prefix: str) -> bool:
        return any(j["title"].startswith(f"composite {prefix}") and j["ended_at"] is None for j in sim.jobs())

    wait_for(lambda: not_ended("B") and not_ended("T"), "a job of B created while one of A is active")
    sim.configure(runs_left=None)  # everything runs
    for thread in threads.values():
        thread.join(timeout=600)  # a bound for hangs (a loaded machine)
    assert not any(t.is_alive() for t in threads.values()), "flow runs did not end in time"
    assert not errors, errors

    ids = {}
    for k, db in dbs.items():
        df = pd.read_parquet(db)
        assert (df["status"] == "finished").all(), df["status"].value_counts()
        ids[k] = set(df["id"])
    counters = sim.counters()
    assert counters["jobs_total"] == ROWS_A + ROWS_B
    assert counters["max_active_per_user"]["alice"] <= PARALLEL  # together, never above the account's limit

    # Each job is active (created, queued or running) from its creation to its end: the simulator's
    # own record of each job, exact however late a sample of the listing would have come.
    active = {j["id"]: (j["created_at"], j["ended_at"]) for j in sim.jobs()}
    overlapping = [(a, b) for a in ids["a"] for b in ids["b"]
                   if max(active[a][0], active[b][0]) < min(active[a][1], active[b][1])]
    assert overlapping, "the two runs never had jobs active at the same moment"
    first_b = min(active[b][0] for b in ids["b"])
    created_by_a = sum(1 for a in ids["a"] if active[a][0] < first_b)
    print(f"B's first job created while A had created {created_by_a} of {ROWS_A}; "
          f"{len(overlapping)} pairs of jobs of A and B active together")
    # First come first served would start B only once A has created all its jobs
    assert created_by_a < ROWS_A

    # B said (once, not every cycle) whose slots it waited for: A's, by its job DB. A, once at its
    # fair share with rows left, may say the same of B's.
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for job slots")]
    assert all(f"{origin(sim.url)}~alice (parallel_jobs {PARALLEL};" in w for w in waits), waits
    per_holder = {db: [w for w in waits if f"{db}.parquet" in w] for db in ("jobs_a", "jobs_b")}
    assert per_holder["jobs_a"], waits
    told_at_most = 1 + math.ceil((time.monotonic() - t0) / 60)
    assert all(len(told) <= told_at_most for told in per_holder.values()), waits
