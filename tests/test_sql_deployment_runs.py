"""The deployment shape of a shared campaign: a `prefect server` on PostgreSQL, a process work pool
with two workers, three runs of `run-jobs/shared-campaign` on one PostgreSQL campaign, each flow run
with its own HOME, TMPDIR, PREFECT_HOME and state folder (what a container per flow run gives),
one flow run SIGKILLed while it holds active jobs.

Only the campaign database can hold the three to the account's `parallel_jobs`: they share no
folder. The fast version of the same guarantees (three processes, separate homes, the session's
Prefect server) is tests/test_sql_campaign_runs.py::test_three_runs_one_campaign_one_killed.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.schema import jobs, runs
from jobdb.status import HOLDS_SLOT
from tests.flow_helpers import PASSWORD_ENV, backend
from tests.prefect_server import PREFECT, ROOT, UUID_RE, PrefectServer
from tests.test_deployment import wait_for_final_state
from tests.test_sql_campaign_runs import assert_each_job_once, make_campaign

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]
# Held until all three flow runs work the campaign: the job listing (a GET, safe to repeat). Holding
# job creation instead would let a client give up on a held POST and create again (a duplicate).
LISTING = "GET /jobs"
LEASE_SECONDS = "4"  # short for tests; production default 60 s
WAIT_LIMIT = 900.0  # a bound for a loaded machine, not a speed target


@pytest.fixture
def server_on_postgres(postgres, tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    url = postgres.database("prefect_server").replace("postgresql://", "postgresql+asyncpg://")
    server = PrefectServer(home, database_url=url)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def slow_sim():
    from simulator import start_simulator
    from tests.flow_helpers import fast_config

    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.5))
    yield sim
    sim.stop()


def flow_run_env(tmp_path: Path, tag: str) -> dict:
    """The environment a container per flow run would give: nothing shared on disk."""
    home = tmp_path / f"flow-run-{tag}"
    env = {}
    for sub, variable in (("home", "HOME"), ("tmp", "TMPDIR"), ("prefect", "PREFECT_HOME"),
                          ("state", "OPENEO_JOBS_STATE_DIR")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[variable] = str(home / sub)
    return env


def registered(db: SqlDatabase, flow_run_ids) -> set:
    with db.engine.connect() as conn:
        notes = [note or {} for note in conn.execute(select(runs.c.note)).scalars()]
    return {note.get("flow_run_id") for note in notes} & set(flow_run_ids)


def wait_for(condition, what: str, tmp_path: Path):
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)  # other processes' rows in the database: no event to wait on
    pytest.fail(f"never saw {what}: {worker_logs(tmp_path)}")


def active_runs(db: SqlDatabase, flow_run_ids) -> dict:
    """flow run id -> (pid, its rows holding a job slot) for the flow runs with a job on the backend."""
    found = {}
    with db.engine.connect() as conn:
        for run_id, note in conn.execute(select(runs.c.run_id, runs.c.note)):
            note = note or {}
            if note.get("flow_run_id") not in flow_run_ids:
                continue
            rows = list(conn.execute(select(jobs.c.row_index).where(
                jobs.c.owner == run_id, jobs.c.status.in_(sorted(HOLDS_SLOT)))).scalars())
            on_backend = conn.execute(select(jobs.c.row_index).where(
                jobs.c.owner == run_id, jobs.c.status.in_(["queued", "running"]))).first()
            if rows and on_backend:
                found[note["flow_run_id"]] = (int(note["pid"]), rows)
    return found


def test_three_deployment_runs_two_workers_one_killed(server_on_postgres, postgres, slow_sim, tmp_path):
    server = server_on_postgres
    url = postgres.database("shared_campaign")
    rows = 45  # each run claims up to 20 waiting rows: all three get some
    make_campaign(url, "eu27", rows)
    db = SqlDatabase.open(url)
    server.cli("work-pool", "create", "openeo-pool", "--type", "process", timeout=300)
    out = server.cli("--no-prompt", "deploy", "-n", "shared-campaign", "--prefect-file", "deployments/prefect.yaml",
                     timeout=300)
    assert "run-jobs/shared-campaign" in out, out
    config = backend("cdse", slow_sim, 3)
    for k in range(2):
        server.spawn([PREFECT, "worker", "start", "--pool", "openeo-pool", "--type", "process",
                      "--name", f"worker-{k}"],
                     log=open(tmp_path / f"worker-{k}.log", "wb"),
                     OPENEO_JOBS_HOME=str(ROOT), PYTHONPATH=str(ROOT), OPENEO_JOBS_LEASE_SECONDS=LEASE_SECONDS,
                     PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1",
                     **{PASSWORD_ENV: slow_sim.config.password})
    flow_runs = []
    slow_sim.gates.close(LISTING)
    for k in range(3):
        parameters = ["-p", f"job_db={url}", "-p", "campaign=eu27", "-p", f"backends={json.dumps([config])}",
                      "-p", "start_job=flows.tiling.demo_callbacks:start_job", "-p", "poll_interval_seconds=0.3",
                      "-p", f"root_dir={tmp_path / f'results-{k}'}"]
        out = server.cli("deployment", "run", "run-jobs/shared-campaign", *parameters,
                         "--job-variable", f"env={json.dumps(flow_run_env(tmp_path, str(k)))}", timeout=300)
        flow_runs.append(UUID_RE.search(out).group(0))

    # Flow runs start one by one (a worker polls, a process boots): the first one's jobs stay
    # queued as far as it knows until all three work the campaign, or it might finish it alone.
    seen: set = set()  # a run may also end early, with nothing left for it to claim

    def all_three_seen() -> bool:
        seen.update(registered(db, flow_runs))
        return len(seen) == 3
    wait_for(all_three_seen, "all three flow runs working the campaign", tmp_path)
    slow_sim.gates.open(LISTING)
    holders = wait_for(lambda: active_runs(db, set(flow_runs)), "a flow run with jobs on the backend", tmp_path)
    doomed, (pid, held) = next(iter(holders.items()))
    os.kill(pid, signal.SIGKILL)

    final = {run: wait_for_final_state(server.api_url, run, timeout=WAIT_LIMIT) for run in flow_runs}
    for run, flow_run in final.items():
        if run == doomed:
            assert not flow_run.state.is_completed(), flow_run.state
        else:
            assert flow_run.state.is_completed(), f"{flow_run.state}\n{worker_logs(tmp_path)}"
    df = db.export("eu27")
    assert_each_job_once(slow_sim, df, rows)
    assert max(slow_sim.counters()["max_active_per_user"].values()) <= 3
    survivors = [tmp_path / f"results-{k}" for k, run in enumerate(flow_runs) if run != doomed]
    for row in held:  # the killed run's jobs were adopted, followed and downloaded by the other runs
        assert df.at[row, "results_status"] == "downloaded"
        assert any((root / f"job_{df.at[row, 'id']}").is_dir() for root in survivors), row
    with db.engine.connect() as conn:  # nothing left claimed: the survivors gave their rows back
        assert conn.execute(select(jobs.c.row_index).where(jobs.c.owner.isnot(None))).first() is None


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("worker-*.log")))
