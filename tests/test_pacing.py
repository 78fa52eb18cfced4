"""Client-side pacing (tasks/accounts/pacing.py) against the simulator's CDSE-like quotas, over HTTP; no Prefect."""
from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.config.params import BackendConfig
from flows.config.setup import connect_backend
from simulator import SimulatorConfig, start_simulator
from tasks.accounts.identity import STATE_DIR_ENV
from tasks.accounts.pacing import StartSchedule, pacer_for

START = "POST /jobs/{id}/results"
GRAPH = {"save": {"process_id": "save_result", "arguments": {"data": 1, "format": "GTiff"}, "result": True}}


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))


@pytest.fixture
def sim():
    sim = start_simulator(SimulatorConfig(queue_time=0.05, run_time=0.1, retry_after=1))
    yield sim
    sim.stop()


def connect(sim, user: str, **quotas):
    import os

    os.environ["PACING_TEST_PASSWORD"] = sim.config.password
    return connect_backend(BackendConfig(name="b", url=sim.url, **quotas, auth={
        "type": "basic", "username": user, "password_env": "PACING_TEST_PASSWORD"}))


def start_many(connection, n: int, workers: int):
    ids = [connection.create_job(GRAPH, title=f"t{i}").job_id for i in range(n)]
    started_at = {}

    def start(job_id):
        connection.post(f"/jobs/{job_id}/results", expected_status=202)
        started_at[job_id] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(start, ids))
    return sorted(started_at.values())


def test_start_turns_keep_a_start_rate_limit_happy(sim):
    # Burst 2: turns leave on the server's rate, but their arrival jitters with the machine's load;
    # with burst 1, one start sent late and the next on time arrived < 0.5 s apart (a 429 at load 9.5).
    sim.configure(rate_limit_per_second=2.0, rate_limit_burst=2, rate_limit_routes=START)
    unpaced = connect(sim, "eager")
    with pytest.raises(Exception, match="429"):  # five threads at once overrun 2 starts/s with burst 2
        start_many(unpaced, 5, workers=5)
    paced = connect(sim, "patient", max_starts_per_minute=120)  # the same rate, client-side
    before = time.monotonic()
    times = start_many(paced, 5, workers=5)
    # the 5th start's turn is 4 intervals after the 1st, which is not before `before` (answers may
    # come late on a loaded machine, a start never comes early)
    assert times[-1] - before >= 4 * 60 / 120, times
    refused = sim.counters()["refusals"]["429"]
    assert refused.get(START, 0) >= 1  # only the unpaced user's
    assert sim.counters()["job_starts"] >= 5 + 1
    assert paced.pacer.counters["start_wait_seconds"] > 1.0


def test_requests_in_flight_capped_for_all_threads_of_an_account(sim):
    sim.configure(max_requests_in_flight=2, create_latency=0.2)
    connection = connect(sim, "alice", max_concurrent_requests=2)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: connection.create_job(GRAPH, title=f"j{i}"), range(12)))
    counters = sim.counters()
    assert counters["faults_injected"]["in_flight"] == 0
    assert 1 <= counters["peak_in_flight_per_user"]["alice"] <= 2  # never above the cap (== 2 unless the machine is busy)
    assert counters["jobs_total"] == 12


def test_a_429_pauses_the_whole_account(sim):
    sim.configure(rate_limit_per_second=0.25, rate_limit_burst=1, rate_limit_routes=START, retry_after=3)
    connection = connect(sim, "alice")  # no start pacing: the server's 429 must be heeded
    first, second = (connection.create_job(GRAPH).job_id for _ in range(2))
    connection.post(f"/jobs/{first}/results", expected_status=202)
    t0 = time.monotonic()  # before the refused request: its 429 (and the pause it sets) comes later
    with pytest.raises(Exception) as refused:
        connection.post(f"/jobs/{second}/results", expected_status=202)
    retry_after = refused.value.retry_after  # the simulator says when its bucket has the next token: ~4 s
    assert refused.value.http_status_code == 429 and 3 <= retry_after <= 4
    assert connection.describe_account()["user_id"] == "alice"  # another thread's kind of call: it waits too
    assert time.monotonic() - t0 >= retry_after - 0.5
    assert connection.pacer.counters["pauses"] == 1


def test_idempotent_requests_retry_after_429(sim):
    # a token per 2 s: the next call comes sooner even on a loaded machine, so a 429 comes (at 2/s it might not)
    sim.configure(rate_limit_per_second=0.5, rate_limit_burst=1, rate_limit_routes="GET /me", retry_after=1)
    connection = connect(sim, "alice")
    for _ in range(3):
        assert connection.describe_account()["user_id"] == "alice"  # a 429 came, the account waited, retried
    assert sim.counters()["refusals"]["429"].get("GET /me", 0) >= 1


def test_one_pacer_per_account_strictest_quota_wins():
    a = pacer_for("http://h|u-strict", max_starts_per_minute=12, max_concurrent_requests=4)
    assert pacer_for("http://h|u-strict", 12, 4) is a
    b = pacer_for("http://h|u-strict", max_starts_per_minute=6, max_concurrent_requests=None)
    assert (b.max_starts_per_minute, b.max_concurrent_requests) == (6, 4)


def test_start_turns_shared_across_processes(tmp_path):
    """Two processes reserving turns for one account get turns 0.4 s apart, all of them."""
    script = (
        "import sys, time; from pathlib import Path; from tasks.accounts.pacing import StartSchedule\n"
        "s = StartSchedule('acct', 0.4, Path(sys.argv[1]))\n"
        "print(*[s.reserve() for _ in range(3)])\n"
    )
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "shared")], cwd=root,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    turns = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)  # a bound for hangs: importing the project can take a minute when loaded
        assert proc.returncode == 0
        turns.extend(float(t) for t in out.split())
    turns.sort()
    assert len(turns) == 6
    assert min(b - a for a, b in zip(turns, turns[1:])) >= 0.4 - 1e-6
    schedule = StartSchedule("acct", 0.4, tmp_path / "shared")
    schedule.push_back(time.time() + 30)
    assert schedule.reserve() >= time.time() + 29  # a Retry-After moves every process's next turn
