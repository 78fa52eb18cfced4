"""Two flow runs at once, two job DBs, one backend account: together they stay within its slots."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import pandas as pd
import pytest

from tasks.accounts import account_id
from tasks.accounts.slots import AccountSlots
from flows.config.setup import connect_backend
from flows.config.params import BackendConfig
from flows.run_jobs import run_jobs
from jobdb import JobDbPaths
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config, let_held_jobs_run_and_join, make_db
from tests.test_interruptions import wait_for

ROOT = Path(__file__).resolve().parents[1]



def marked_jobs(sim, db: Path, statuses=("queued", "running")) -> List[str]:
    """Ids of the simulator's jobs created for rows of `db` (by the row marker in their titles)."""
    tag = f"[ojm:{JobDbPaths.of(db).marker_prefix}-"
    return [j["id"] for j in sim.jobs() if tag in (j["title"] or "") and j["status"] in statuses]


def db_statuses(db: Path) -> Dict[str, int]:
    try:
        return pd.read_parquet(db)["status"].value_counts().to_dict()
    except (OSError, ValueError):
        return {}  # being replaced: read again


@pytest.mark.usefixtures("prefect_harness")
def test_two_overlapping_runs_share_the_account_slots(tmp_path):
    """Run A holds 2 of the account's 3 slots with jobs that stay queued on the backend (the
    simulator runs none of them yet), run B starts beside it: B must take exactly the 1 slot left
    and wait. Only then may jobs run. The overlap is made, not hoped for: both runs have jobs
    active at the same moment, so the peak of 3 shows the shared limit held it back."""
    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3, max_running_per_user=0))
    dbs = {"A": make_db(tmp_path / "jobs_a.parquet", 2), "B": make_db(tmp_path / "jobs_b.parquet", 6)}
    # Different backend names (as two users might call it), the same account: one shared limit of 3.
    configs = {"A": backend("sim-a", sim, 3), "B": backend("sim-b", sim, 3)}
    assert connect_backend(BackendConfig(**configs["A"])).account == connect_backend(BackendConfig(**configs["B"])).account
    results, errors = {}, {}

    def run(k):
        try:
            results[k] = run_jobs(job_db=str(dbs[k]), backends=[configs[k]],
                                  start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[k] = exc

    threads = {k: threading.Thread(target=run, args=(k,), daemon=True) for k in dbs}
    try:
        threads["A"].start()
        wait_for(lambda: len(marked_jobs(sim, dbs["A"])) == 2 or errors, 600, "run A's 2 jobs queued")
        threads["B"].start()
        # B has started what it was allowed to and waits: none of its starts in flight, rows left
        wait_for(lambda: db_statuses(dbs["B"]).get("queued", 0) >= 1 and not set(db_statuses(dbs["B"]))
                 & {"creating", "created", "queued_for_start"} or errors, 600, "run B to start its share and wait")
        assert not errors, errors
        active = {k: marked_jobs(sim, db) for k, db in dbs.items()}
        print(f"\nboth runs active at once: A {len(active['A'])}, B {len(active['B'])} jobs")
        assert len(active["A"]) == 2 and len(active["B"]) == 1, active  # overlapped, B within the slot left
        assert sim.counters()["max_active_per_user"]["alice"] == 3
        let_held_jobs_run_and_join(sim, threads)  # now the jobs run and both runs finish
    finally:
        sim.configure(max_running_per_user=None)
        sim.stop()
    assert not errors, errors
    assert results["A"]["status"] == {"finished": 2} and results["B"]["status"] == {"finished": 6}
    counters = sim.counters()
    assert counters["jobs_total"] == 8 and counters["duplicate_titles"] == {}
    assert counters["max_active_per_user"]["alice"] == 3  # never more, for the whole of both runs


def test_slots_of_a_killed_run_come_back_at_the_next_claim(tmp_path):
    """The ledger without leases: a run SIGKILLed while holding all of an account's slots frees
    them the moment it dies (its flock goes with it), not after an expiry."""
    account = {"a": "127.0.0.1:9~alice"}
    state = tmp_path / "state"
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from pathlib import Path\n"
        "from tasks.accounts.slots import AccountSlots\n"
        "slots = AccountSlots({'a': '127.0.0.1:9~alice'}, 'doomed',"
        " state_dir=Path(%r))\n"
        "slots.claim(lambda others: (None, {'a': 3}))\n"
        "print('holding', flush=True)\n"
        "time.sleep(120)\n"
    ) % (str(ROOT), str(state))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    survivor = AccountSlots(account, "survivor", state_dir=state)
    try:
        assert child.stdout.readline().strip() == "holding"
        assert survivor.others() == {"a": 3}  # alive: its slots count
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        seen = survivor.claim(lambda others: (others, {"a": 3}))
        assert seen == {"a": 0}  # the very next claim: no lease, no expiry to wait for
        assert survivor.others() == {"a": 0}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        survivor.close()
    assert not list((state / "accounts").rglob("*.slots.json"))  # nothing left behind


def test_two_runs_in_one_process_see_each_other(tmp_path):
    first = AccountSlots({"a": "127.0.0.1:9~alice"}, "one", state_dir=tmp_path)
    second = AccountSlots({"other-name": "127.0.0.1:9~alice"}, "two", state_dir=tmp_path)
    try:
        first.claim(lambda others: (None, {"a": 2}))
        assert second.others() == {"other-name": 2}  # same account, whatever the run calls the backend
        first.close()
        assert second.others() == {"other-name": 0}
    finally:
        second.close()


def ledger(state: Path, run_id: str, name: str = "a") -> AccountSlots:
    """A run's entry in the slot ledger of one account (the same URL and user whatever `name`).
    No `limits`: the others' count is exactly what they hold (fair shares: tests/test_accounts.py)."""
    return AccountSlots({name: account_id("http://127.0.0.1:9", "alice")}, run_id, state_dir=state)


def test_a_claim_sees_every_slot_another_live_run_holds(tmp_path):
    holder, claimer = ledger(tmp_path, "holder"), ledger(tmp_path, "claimer", name="b")
    try:
        for n in (3, 1, 2):
            holder.claim(lambda others: (None, {"a": n}))
            seen = claimer.claim(lambda others: (others, {"b": 0}))
            assert seen == {"b": n}, n
        # the claimer's decision counts for the holder in turn
        claimer.claim(lambda others: (None, {"b": 1}))
        assert holder.claim(lambda others: (others, {"a": 2})) == {"a": 1}
        holder.close()
        assert claimer.claim(lambda others: (others, {"b": 1})) == {"b": 0}
    finally:
        holder.close()
        claimer.close()


def test_concurrent_claims_always_see_the_true_holdings_and_never_exceed_the_limit(tmp_path):
    """Two runs claim 150 times each from two threads, each taking a random share of what is
    free: inside every claim the others' count is exactly what they hold, the sum stays <= 3."""
    limit, truth, violations = 3, {"one": 0, "two": 0}, []
    runs = {k: ledger(tmp_path, k, name=f"name-{k}") for k in truth}
    start = threading.Barrier(2)

    def claim(me: str, want) -> None:
        other = next(k for k in truth if k != me)

        def decide(others):
            seen = others[f"name-{me}"]
            take = min(want(seen), max(0, limit - seen))
            if seen != truth[other] or seen + take > limit:
                violations.append((me, seen, truth[other], take))
            truth[me] = take
            return None, {f"name-{me}": take}
        runs[me].claim(decide)

    def churn(me: str, seed: int) -> None:
        rng = random.Random(seed)
        start.wait(60)
        for _ in range(150):
            claim(me, lambda seen: rng.randint(0, limit))

    claim("one", lambda seen: 2)  # one holds 2: two must see them
    claim("two", lambda seen: 3)  # and gets only the 1 left
    assert truth == {"one": 2, "two": 1}
    threads = [threading.Thread(target=churn, args=(k, i)) for i, k in enumerate(truth)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for slots in runs.values():
            slots.close()
    assert not any(t.is_alive() for t in threads)
    assert violations == [], violations[:5]
