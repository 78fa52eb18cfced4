"""Two flow runs at once, two job DBs, one backend account: together they stay within its slots."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from flows.account_slots import AccountSlots, account_key
from flows.params import BackendConfig
from flows.run_jobs import run_jobs
from tests.flow_helpers import backend, make_db

ROOT = Path(__file__).resolve().parents[1]



@pytest.mark.usefixtures("prefect_harness")
def test_two_runs_share_the_account_slots(sim, tmp_path):
    dbs = [make_db(tmp_path / f"jobs_{k}.parquet", 8) for k in range(2)]
    # Different backend names (as two users might call it), the same account: one shared limit.
    configs = [backend("sim-a", sim, 3), backend("sim-b", sim, 3)]
    assert account_key(BackendConfig(**configs[0])) == account_key(BackendConfig(**configs[1]))
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


def test_slots_of_a_killed_run_come_back_at_the_next_claim(tmp_path):
    """The ledger without leases: a run SIGKILLed while holding all of an account's slots frees
    them the moment it dies (its flock goes with it), not after an expiry."""
    account = {"a": BackendConfig(name="a", url="http://127.0.0.1:9", parallel_jobs=3)}
    state = tmp_path / "state"
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from pathlib import Path\n"
        "from flows.account_slots import AccountSlots\n"
        "from flows.params import BackendConfig\n"
        "slots = AccountSlots({'a': BackendConfig(name='a', url='http://127.0.0.1:9', parallel_jobs=3)}, 'doomed',"
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
        t0 = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        seen = survivor.claim(lambda others: (others, {"a": 3}))
        assert seen == {"a": 0} and time.monotonic() - t0 < 5
        assert survivor.others() == {"a": 0}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        survivor.close()
    assert not list((state / "accounts").rglob("*.json"))  # nothing left behind


def test_two_runs_in_one_process_see_each_other(tmp_path):
    account = {"a": BackendConfig(name="a", url="http://127.0.0.1:9", parallel_jobs=3)}
    first = AccountSlots(account, "one", state_dir=tmp_path)
    second = AccountSlots({"other-name": BackendConfig(name="other-name", url="http://127.0.0.1:9")}, "two",
                          state_dir=tmp_path)
    try:
        first.claim(lambda others: (None, {"a": 2}))
        assert second.others() == {"other-name": 2}  # same account, whatever the run calls the backend
        first.close()
        assert second.others() == {"other-name": 0}
    finally:
        second.close()
