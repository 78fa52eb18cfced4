"""Many runs on one PostgreSQL campaign: separate processes, each with its own HOME, TMPDIR,
PREFECT_HOME and state folder (what a container per flow run gives), one SIGKILLed mid-way;
two campaigns on one account; a PostgreSQL restart mid-run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
import pytest
from sqlalchemy import func, select

from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.schema import jobs, runs
from jobdb.status import HOLDS_SLOT
from tasks.retry_policy import REQUEST_TIMEOUT_ENV
from tests.flow_helpers import backend, fast_config
from simulator import start_simulator

# Separate processes each import Prefect and log in: on a loaded 2-core machine that alone can take
# minutes, so these tests wait for events (rows claimed, processes ended), not for a clock.
pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]
LEASE_SECONDS = "4"  # short for tests; production default 60 s
WAIT_LIMIT = 400.0  # each wait: a generous bound for a loaded machine, not a speed target
# A killed run's `creating` rows whose job is not found are created again only after a grace of 3
# request timeouts (its POST may still be under way): with the session's 20 s the survivors waited
# 60 s for them; 5 s (as tests/test_crash_recovery.py) keeps that wait at 15 s.
KILLED_RUN_REQUEST_TIMEOUT = "5"


@pytest.fixture
def slow_sim():
    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.5))
    yield sim
    sim.stop()


def make_campaign(url: str, name: str, rows: int) -> None:
    df = pd.DataFrame({"tile_id": [f"{name}-{i:03d}" for i in range(rows)], "year": [2021] * rows})
    SqlDatabase.open(url, create=True).create_campaign(name, df)


def spawn_run(tmp_path: Path, tag: str, request_timeout: Optional[str] = None, **kwargs) -> subprocess.Popen:
    """A flow run in its own process, sharing nothing on disk with the others."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / f"run-{tag}"
    for sub in ("home", "tmp", "prefect", "state"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(home / "home"), TMPDIR=str(home / "tmp"), PREFECT_HOME=str(home / "prefect"),
               OPENEO_JOBS_STATE_DIR=str(home / "state"), PREFECT_API_URL=PREFECT_API_URL.value(),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT), OPENEO_JOBS_LEASE_SECONDS=LEASE_SECONDS)
    if request_timeout is not None:
        env[REQUEST_TIMEOUT_ENV] = request_timeout
    kwargs = {"start_job": "flows.tiling.demo_callbacks:start_job", "poll_interval_seconds": 0.3,
              "root_dir": str(home / "results"), **kwargs}
    log = open(home / "run.log", "wb")
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_all(children: List[subprocess.Popen], tmp_path: Path) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    for child in children:
        try:
            child.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for c in children:
                if c.poll() is None:
                    os.killpg(c.pid, signal.SIGKILL)
            pytest.fail(f"runs did not end within {WAIT_LIMIT} s: {logs(tmp_path)}")
    assert all(c.returncode == 0 for c in children), logs(tmp_path)


def logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("run-*/run.log")))


def active_rows_of(db: SqlDatabase, pid: int) -> List[int]:
    """Rows holding a job slot (creating … running) claimed by the run of process `pid`."""
    with db.engine.connect() as conn:
        run_ids = [r for r, note in conn.execute(select(runs.c.run_id, runs.c.note)) if (note or {}).get("pid") == pid]
        if not run_ids:
            return []
        return list(conn.execute(select(jobs.c.row_index).where(
            jobs.c.owner.in_(run_ids), jobs.c.status.in_(sorted(HOLDS_SLOT)))).scalars())


def describe_claims(db: SqlDatabase) -> str:
    with db.engine.connect() as conn:
        notes = list(conn.execute(select(runs.c.run_id, runs.c.note)))
        owners = list(conn.execute(select(jobs.c.owner, jobs.c.status, func.count()).group_by(jobs.c.owner, jobs.c.status)))
    return f"runs: {notes}; rows: {owners}"


def wait_until(condition, what: str, child: subprocess.Popen, tmp_path: Path, context=lambda: ""):
    deadline = time.monotonic() + WAIT_LIMIT
    seen = ""
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        seen = context() or seen
        if child.poll() is not None:
            pytest.fail(f"run ended before {what} (last seen: {seen}): {logs(tmp_path)}")
        time.sleep(0.05)  # polling another process's rows in the database: no event to wait on
    pytest.fail(f"never saw {what}: {logs(tmp_path)}")


def assert_each_job_once(sim, df: pd.DataFrame, rows: int) -> None:
    counters = sim.counters()
    assert (df["status"] == "finished").all(), df["status"].value_counts()
    assert counters["duplicate_titles"] == {}
    assert counters["jobs_total"] == rows
    with sim.state.lock:
        backend_jobs = set(sim.state.jobs)
    assert df["id"].is_unique and set(df["id"]) == backend_jobs  # every backend job tracked by exactly one row


def test_three_runs_one_campaign_one_killed(postgres, slow_sim, tmp_path):
    url = postgres.database("three_runs")
    rows = 18
    make_campaign(url, "eu27", rows)
    db = SqlDatabase.open(url)
    config = backend("cdse", slow_sim, 3)
    children = [spawn_run(tmp_path, str(k), KILLED_RUN_REQUEST_TIMEOUT, job_db=url, campaign="eu27", backends=[config])
                for k in range(3)]

    def first_holder():  # the slots are the account's, shared by all three: any run may get them first
        for child in children:
            rows = active_rows_of(db, child.pid)
            if rows:
                return child, rows
        return None

    doomed, held = wait_until(first_holder, "a run holding active jobs", children[0], tmp_path,
                              lambda: describe_claims(db))
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(30)
    survivors = [c for c in children if c is not doomed]
    wait_all(survivors, tmp_path)

    df = db.export("eu27")
    assert_each_job_once(slow_sim, df, rows)
    assert max(slow_sim.counters()["max_active_per_user"].values()) <= 3
    survivors = [tmp_path / f"run-{k}" / "results" for k, c in enumerate(children) if c is not doomed]
    for row in held:  # the killed run's jobs were adopted, followed and downloaded by the others
        job_dir = f"job_{df.at[row, 'id']}"
        assert df.at[row, "results_status"] == "downloaded"
        assert any((root / job_dir).is_dir() for root in survivors), (row, job_dir)


START = "POST /jobs/{id}/results"


def test_two_campaigns_one_account_share_its_slots_and_start_turns(postgres, slow_sim, tmp_path):
    """Two processes that share no folder: only the database can hold them to the account's
    slots and to its start rate. The simulator answers 429 past a start every 2 s, with a burst of
    3 so that a start sent late by a loaded machine (the next one then comes early) is not counted
    against the pacing; two unshared schedules would still send twice the rate and meet 429s."""
    url = postgres.database("two_campaigns")
    for name in ("north", "south"):
        make_campaign(url, name, 8)
    slow_sim.configure(rate_limit_per_second=0.5, rate_limit_burst=3, rate_limit_routes=START)
    config = {**backend("cdse", slow_sim, 3), "max_starts_per_minute": 28}  # a turn every 2.2 s
    children = [spawn_run(tmp_path, name, job_db=url, campaign=name, backends=[config]) for name in ("north", "south")]
    wait_all(children, tmp_path)
    db = SqlDatabase.open(url)
    for name in ("north", "south"):
        assert (db.export(name)["status"] == "finished").all()
    counters = slow_sim.counters()
    assert counters["jobs_total"] == 16 and counters["duplicate_titles"] == {}
    assert max(counters["max_active_per_user"].values()) <= 3
    assert counters["refusals"].get("429", {}).get(START, 0) == 0, counters["refusals"]


def test_postgres_restart_mid_run(postgres, slow_sim, tmp_path):
    url = postgres.database("restart")
    rows = 10
    make_campaign(url, "eu", rows)
    db = SqlDatabase.open(url)
    child = spawn_run(tmp_path, "r", job_db=url, campaign="eu", backends=[backend("cdse", slow_sim, 3)])
    wait_until(lambda: active_rows_of(db, child.pid), "jobs running", child, tmp_path)
    postgres.restart()
    wait_all([child], tmp_path)
    df = SqlDatabase.open(url).export("eu")
    assert_each_job_once(slow_sim, df, rows)
