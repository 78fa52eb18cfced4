"""End-to-end runs of the run-jobs flow: real Prefect, simulated backends over HTTP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openeo.extra.job_management as ojm
import pandas as pd
import pytest

from flows.run_jobs import run_jobs
from tests.flow_helpers import (
    assert_results_complete,
    backend,
    make_db,
    manager_requests_per_job,
    most_at_once,
    recorded_task_runs,
    started_simulators,
    serve_json,
    UDP_DEFINITION,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def two_sims():
    sims = started_simulators(2)
    yield sims
    for sim in sims:
        sim.stop()


def test_a_run_on_two_backends(two_sims, tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 12)  # 2 waves of 3 + 3 slots
    stats = run_jobs(
        job_db=str(db),
        backends=[backend("a", two_sims[0], 3), backend("b", two_sims[1], 3)],
        start_job="flows.tiling.demo_callbacks:start_job",
        poll_interval_seconds=0.5,
    )
    df = pd.read_parquet(db)
    assert (df["status"] == "finished").all(), df["status"].value_counts()
    assert set(df["backend_name"]) == {"a", "b"}  # both backends shared the work
    assert df["cpu"].str.endswith("cpu-seconds").all() and df["costs"].gt(0).all()
    assert df["start_time"].notna().all()
    assert_results_complete(tmp_path, df, asset_size=2048)
    total_jobs = 0
    for sim in two_sims:
        counters = sim.counters()
        assert max(counters["max_active_per_user"].values()) <= 3
        assert counters["duplicate_titles"] == {}
        total_jobs += counters["jobs_total"]
    assert total_jobs == 12
    # Per job: start, metadata, results, 1 asset; polls are one listing per backend per cycle, so
    # their number follows the run's length (the machine's speed), not the number of jobs.
    listings = sum(s.counters()["requests"].get("GET /jobs 200", 0) for s in two_sims)
    per_job = (sum(manager_requests_per_job(s.counters(), 1) for s in two_sims) - listings) / 12
    print(f"manager requests per job: {per_job:.2f} (1 asset each) + {listings} listings in {stats['cycles']} cycles")
    assert per_job <= 4
    assert listings <= 2 * stats["cycles"]
    assert stats["status"] == {"finished": 12}

    # Prefect has the run: read it back through the client.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert any(r.state and r.state.is_completed() and r.name for r in runs)


def test_callback_that_starts_itself_and_openeo_created_db(two_sims, tmp_path):
    """An openeo-style callback that calls job.start() itself, on a DB made by openeo's create_job_db."""
    path = tmp_path / "jobs.csv"
    ojm.create_job_db(path, pd.DataFrame({"tile_id": ["x1", "x2", "x3", "x4"], "year": [2021, 2022, 2021, 2022]}))
    stats = run_jobs(
        job_db=str(path),
        backends=[backend("a", two_sims[0], 2)],
        start_job="flows.tiling.demo_callbacks:start_and_run_job",
        poll_interval_seconds=0.3,
    )
    assert stats["status"] == {"finished": 4}
    counters = two_sims[0].counters()
    # the callback started each job; the manager did not start it a second time
    assert counters["requests"].get("POST /jobs/{id}/results 202") == 4
    # and openeo's own manager reads the result
    df = ojm.get_job_db(path).read()
    assert list(df["status"]) == ["finished"] * 4


def test_errored_jobs_keep_their_logs(tmp_path):
    (sim,) = started_simulators(1, p_error=0.5, seed=3)
    try:
        db = make_db(tmp_path / "jobs.parquet", 8)
        run_jobs(job_db=str(db), backends=[backend("a", sim, 4)], start_job="flows.tiling.demo_callbacks:start_job",
                 poll_interval_seconds=0.3, failure_threshold=1.0)
    finally:
        sim.stop()
    df = pd.read_parquet(db)
    assert set(df["status"]) <= {"finished", "error"} and (df["status"] == "error").any()
    for _, row in df[df["status"] == "error"].iterrows():
        logs = json.loads((tmp_path / f"job_{row['id']}" / f"job_{row['id']}_errors.json").read_text())
        assert logs and all(entry["level"] == "error" for entry in logs)
        assert row["error_message"] == logs[0]["message"]  # the first error line (issue 10: the cause)
    assert_results_complete(tmp_path, df, asset_size=2048)


@pytest.fixture
def udp_server():
    with serve_json(UDP_DEFINITION) as url:
        yield url


def test_process_based_creator(two_sims, tmp_path, udp_server):
    db = make_db(tmp_path / "jobs.parquet", 3)
    stats = run_jobs(
        job_db=str(db),
        backends=[backend("a", two_sims[0], 3)],
        process={"process_id": "ndvi_composite", "namespace": udp_server, "parameter_defaults": {"max_cloud": 20}},
        poll_interval_seconds=0.3,
    )
    assert stats["status"] == {"finished": 3}


@pytest.mark.slow  # 27 s; in the default run: test_crash_recovery.py::test_killed_in_every_phase_then_resumed
def test_killed_run_resumes_without_duplicates(two_sims, tmp_path, prefect_harness):
    """Kill the flow process mid-way (SIGKILL), run again: every row ends, no job twice."""
    from prefect.settings import PREFECT_API_URL

    sim = two_sims[0]
    sim.configure(run_time=1.0)
    db = make_db(tmp_path / "jobs.parquet", 10)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                  poll_interval_seconds=0.3)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a bound for hangs: the child imports Prefect first (minutes when loaded)
        while time.monotonic() < deadline:
            if db.exists():
                statuses = pd.read_parquet(db)["status"]
                if statuses.isin(["queued", "running", "finished"]).sum() >= 2:
                    break
            time.sleep(0.1)  # polling the DB file the child writes; no event to wait on across processes
        else:
            pytest.fail("child flow never started jobs")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    before = pd.read_parquet(db)
    assert not before["status"].isin(["finished"]).all()

    stats = run_jobs(**kwargs)
    df = pd.read_parquet(db)
    assert (df["status"] == "finished").all(), df["status"].value_counts()
    counters = sim.counters()
    assert counters["duplicate_titles"] == {}
    assert counters["jobs_total"] == 10
    assert_results_complete(tmp_path, df, asset_size=2048)
    assert stats["status"] == {"finished": 10}


def test_long_runners_are_canceled(tmp_path):
    (sim,) = started_simulators(1, run_time=60)
    try:
        db = make_db(tmp_path / "jobs.parquet", 3)
        stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=0.3, cancel_running_job_after=1.0, download_results=False,
                         failure_threshold=1.0)
    finally:
        sim.stop()
    assert stats["status"] == {"canceled": 3}
    assert sim.counters()["requests"].get("DELETE /jobs/{id}/results 204") == 3
    assert not list(tmp_path.glob("job_*"))  # nothing downloaded


def test_many_jobs_ending_together_download_in_batches(tmp_path):
    """When many jobs end in one cycle their downloads share task runs (fewer Prefect events)."""
    (sim,) = started_simulators(1)
    try:
        db = make_db(tmp_path / "jobs.parquet", 30)
        stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 30)], start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=2.0)
    finally:
        sim.stop()
    df = pd.read_parquet(db)
    assert stats["status"] == {"finished": 30}
    assert (df["results_status"] == "downloaded").all()
    assert stats["download_tasks"] < 30  # at least one batch
    assert_results_complete(tmp_path, df, asset_size=2048)


def test_many_waiting_rows_start_in_batches(tmp_path):
    """Far more free slots than start workers: rows start in batch task runs, each exactly once."""
    (sim,) = started_simulators(1)
    try:
        # 24 rows > START_BATCH_FACTOR x 4 create workers (2 start workers, twice as many creates for
        # 24 slots), all waiting in the first cycle: batches of 2 (flows/run_loop/dispatcher.py:
        # start_batch_size, flows/run_loop/account_sharing.py: create_workers)
        db = make_db(tmp_path / "jobs.parquet", 24)
        stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 24)], start_job="flows.tiling.demo_callbacks:start_job",
                         max_start_workers=2, poll_interval_seconds=0.5)
    finally:
        sim.stop()
    assert stats["status"] == {"finished": 24}
    assert stats["start_tasks"] < 24
    counters = sim.counters()
    assert counters["jobs_total"] == 24 and counters["duplicate_titles"] == {}
    assert counters["requests"].get("POST /jobs/{id}/results 202") == 24
    assert_results_complete(tmp_path, pd.read_parquet(db), asset_size=2048)


def test_max_parallel_starts_is_the_schedulers_not_a_tag_limit(tmp_path, prefect_harness):
    """max_parallel_starts caps start tasks inside the run: the task runs carry only the openeo tags
    (flows/config/limits.py), on which no limit exists, so none takes a Prefect concurrency lease that a
    killed run could strand."""
    (sim,) = started_simulators(1)
    try:
        db = make_db(tmp_path / "jobs.parquet", 24)
        config = {**backend("capped", sim, 24), "max_parallel_starts": 4}
        state = run_jobs(job_db=str(db), backends=[config], start_job="flows.tiling.demo_callbacks:start_job",
                         max_start_workers=2, poll_interval_seconds=0.5, return_state=True)
    finally:
        sim.stop()
    stats = state.result()
    assert stats["status"] == {"finished": 24}
    mine = recorded_task_runs(state.state_details.flow_run_id, "@capped",
                              lambda runs: len(runs) >= stats["start_tasks"] and all(r.end_time for r in runs),
                              "every start task run, ended")
    assert all(set(r.tags) == {"openeo", "openeo-backend:capped", f"openeo-account:127.0.0.1:{sim.port}~alice"}
               for r in mine)
    # a task run is Running -> Completed inside its worker; `start-…` task runs that create and start
    # run on the create workers (4 here: they follow the 24 slots, at most twice max_start_workers),
    # and max_parallel_starts=4 (the scheduler's) caps create and start tasks in flight together
    assert most_at_once([(r.start_time, r.end_time) for r in mine]) <= 4
