"""An operator's tag concurrency limit on `openeo-backend:<name>` works as Prefect promises, and the
CLI's own server keeps its leases on disk, so a killed run's slot comes back after the lease time."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, List

import httpx
import pytest

from flows.console.local_server import local_prefect_server
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, backend, fast_config, make_db, most_at_once, recorded_task_runs
from tests.test_interruptions import server_pids

ROOT = Path(__file__).resolve().parents[1]
# A bound for a server start on loaded cores (its database comes migrated: `prefect_home` in conftest.py).
SERVER_START_TIMEOUT = 240.0
LEASE_SECONDS = 60  # what Prefect 3.9.1's task engine asks for a tagged task run (no setting changes it)


@pytest.mark.usefixtures("prefect_harness")
def test_a_tag_limit_of_one_allows_one_start_task_at_once(tmp_path):
    from prefect.client.orchestration import get_client
    from flows.run_jobs import run_jobs

    name = f"tagged{uuid.uuid4().hex[:6]}"
    tag = f"openeo-backend:{name}"
    # Each start takes 1 s on the backend and 4 start workers wait: without the limit they overlap.
    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3, start_latency=1.0))
    db = make_db(tmp_path / "jobs.parquet", 4)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
    try:
        state = run_jobs(job_db=str(db), backends=[backend(name, sim, 4)], start_job="flows.tiling.demo_callbacks:start_job",
                         max_start_workers=4, poll_interval_seconds=0.5, return_state=True)
        # the server records task runs from the engine's events, after the flow may have returned
        starts = recorded_task_runs(state.state_details.flow_run_id, "start-",
                                    lambda runs: len(runs) >= 4 and all(r.end_time for r in runs),
                                    "4 ended start task runs")
        with get_client(sync_client=True) as client:
            limit = client.read_concurrency_limit_by_tag(tag)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(tag)
        sim.stop()
    assert state.is_completed(), state.message
    assert sim.counters()["jobs_total"] == 4
    assert len(starts) == 4 and all(tag in r.tags for r in starts)
    # A task run takes its slot before it turns Running and gives it back after it turned Completed
    # (prefect/task_engine.py), and both times come from that one process's clock: intervals that
    # overlap would be two task runs in the slot at once, whatever the machine's speed.
    intervals = [(r.start_time, r.end_time) for r in starts]
    print(f"\nstart task runs (Running -> Completed): {sorted((s.isoformat(), e.isoformat()) for s, e in intervals)}")
    assert most_at_once(intervals) == 1
    assert not limit.active_slots  # every slot handed back


# --- the CLI's own server: leases on disk -----------------------------------------------------
@contextlib.contextmanager
def cli_server_env(home: Path) -> Iterator[None]:
    """The CLI's own server (flows/console/local_server.py) on `home`, as the CLI would start it."""
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS"] = "1"  # look for expired leases every second
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def lease_files(home: Path) -> List[Path]:
    folder = home / "concurrency_leases"
    return [p for p in folder.glob("*.json") if p.name != "expirations.json"] if folder.exists() else []


def active_slots(api_url: str, tag: str) -> int:
    response = httpx.get(f"{api_url}/v2/concurrency_limits/tag:{tag}", timeout=10)
    response.raise_for_status()
    return int(response.json()["active_slots"])


def wait_for(condition, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never observed: {what}"
        time.sleep(0.2)  # another process's effect (a file, a server's state): nothing to wait on


def killed_run_holding_the_slot(tmp_path: Path, home: Path, tag: str):
    """A CLI run SIGKILLed while one of its start tasks holds the tag limit's only slot, on the
    server the CLI starts for itself (`LocalServer`, its leases on disk), started here so that the
    tag limit is made on it before the run (one server start fewer than a server for the limit and
    another for the run). Its server then stops as when its CLI dies: the pipe to its watchdog
    closes."""
    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.5, start_latency=30.0))
    try:
        with local_prefect_server(SERVER_START_TIMEOUT) as api_url:
            created: List[int] = []

            def create_limit() -> bool:  # a fresh server answers 503 for a while after /health is 200
                created.append(httpx.post(f"{api_url}/concurrency_limits/", json={"tag": tag, "concurrency_limit": 1},
                                          timeout=30).status_code)
                return created[-1] < 500

            wait_for(create_limit, "the tag limit created", 120)
            assert created[-1] == 201, created
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), PREFECT_API_URL=api_url,
                       PREFECT_SERVER_ANALYTICS_ENABLED="false", **{PASSWORD_ENV: sim.config.password})
            db = make_db(tmp_path / "jobs.parquet", 3)
            argv = [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), "--backend",
                    f"a={sim.url},parallel_jobs=3,user=alice,password_env={PASSWORD_ENV}",
                    "--start-job", "flows.tiling.demo_callbacks:start_job", "--poll-interval", "0.3"]
            child = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
            try:
                # POST /jobs answered and the start request sleeping 30 s: a start task holds the slot
                wait_for(lambda: sim.counters()["jobs_total"] >= 1 or child.poll() is not None, "a start task running",
                         240)
                assert child.poll() is None, child.stderr.read()[-2000:]
                assert lease_files(home), "the server keeps its leases in memory (flows/console/local_server.py: server_env)"
                os.kill(child.pid, signal.SIGKILL)  # the run only
                child.wait(30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(30)
    finally:
        sim.stop()
    wait_for(lambda: not server_pids(home), "the killed run's server stopped", 60)


@pytest.mark.timeout(900)  # two Prefect server starts: minutes on loaded cores
def test_the_cli_servers_leases_survive_a_kill_and_a_restart(tmp_path, prefect_home):
    """Fast half: after SIGKILL + server restart the slot is still taken *and its lease is still
    known, expiring within the lease time* — so the server's repossessor will free it (the slow
    test waits for that). With leases in memory the restart forgets the lease and keeps the slot."""
    home, tag = prefect_home, "openeo-backend:a"  # its database migrated once per session (conftest.py)
    with cli_server_env(home):
        killed_run_holding_the_slot(tmp_path, home, tag)
        (lease,) = lease_files(home)  # on disk after the server stopped, where its repossessor looks
        expiration = datetime.fromisoformat(json.loads(lease.read_text())["expiration"])
        index = json.loads((home / "concurrency_leases" / "expirations.json").read_text())
        assert datetime.fromisoformat(index[lease.stem]) == expiration
        assert (expiration - datetime.now(timezone.utc)).total_seconds() <= LEASE_SECONDS
        with local_prefect_server(SERVER_START_TIMEOUT) as api_url:
            # still taken with its lease known, or (a slow restart) already handed back: never taken
            # without a lease (the lease is deleted before the slot's decrement commits)
            assert active_slots(api_url, tag) == 1 or not lease_files(home)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_runs_tag_slot_comes_back_after_the_lease_time(tmp_path, prefect_home):
    home, tag = prefect_home, "openeo-backend:a"
    with cli_server_env(home):
        killed_run_holding_the_slot(tmp_path, home, tag)
        t0 = time.monotonic()
        with local_prefect_server(SERVER_START_TIMEOUT) as api_url:
            wait_for(lambda: active_slots(api_url, tag) == 0, "the slot handed back", LEASE_SECONDS + 90)
            print(f"\nslot free {time.monotonic() - t0:.1f} s after the server restart")
            assert not lease_files(home)
