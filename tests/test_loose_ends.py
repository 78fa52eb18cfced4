"""Loose ends of issue 17 that hold a guarantee: a failed run still sends what it queued for
Prefect; a task given only a backend config runs alone, from another flow."""
from __future__ import annotations

import threading

import pandas as pd
import pytest

import flows.run_jobs as run_jobs_module
from flows.run_jobs import run_jobs
from jobdb import JobDatabase
from jobdb.status import CREATING, START_FAILED
from tests.flow_helpers import backend


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_whose_cycle_raises_still_sends_its_queued_events(sim, tmp_path, monkeypatch):
    """The event of the last change is still being sent when the cycle raises: the run waits for it
    before it tears down (a lost publisher would send it, if at all, after the teardown)."""
    order, sending = [], threading.Event()

    def slow_event(**event):  # a slow Prefect API: well within the run's wait for it (5 s)
        sending.set()
        threading.Event().wait(1.0)
        order.append(event["event"])

    def cycle_that_raises(self):
        self.book.on_change(0, CREATING, START_FAILED)
        assert sending.wait(300)  # the publisher took the event up (after the progress artifact)
        raise RuntimeError("the cycle broke")

    def watch_for_cancel(stop, flow_run_id):
        return lambda: order.append("teardown")  # the first thing the run does once the cycle is over

    monkeypatch.setattr("flows.run_loop.events.emit_event", slow_event)
    monkeypatch.setattr(run_jobs_module.Cycle, "run", cycle_that_raises)
    monkeypatch.setattr(run_jobs_module, "watch_for_cancel", watch_for_cancel)
    db = tmp_path / "jobs.csv"
    JobDatabase.create(db, pd.DataFrame({"tile_id": ["A"]}))
    with pytest.raises(RuntimeError, match="the cycle broke"):
        run_jobs(job_db=str(db), backends=[backend("a", sim, 1)], start_job="flows.tiling.demo_callbacks:start_job")
    assert order[:2] == [f"openeo.job.{START_FAILED}", "teardown"]


@pytest.mark.usefixtures("prefect_harness")
def test_start_and_poll_tasks_run_alone_from_another_flow_given_only_a_backend_config(sim, monkeypatch):
    """No run-jobs flow, no registered connection: each task connects from the config it is given."""
    from prefect import flow

    from flows.config.params import BackendConfig
    from flows.tiling.demo_callbacks import start_job
    from jobdb.status import BACKEND_STATUSES, QUEUED
    from tasks import connection_registry
    from tasks.poll import poll_backend
    from tasks.start import start_jobs

    config = BackendConfig.model_validate(backend("solo", sim, 1))

    @flow
    def somebody_elses_flow():
        started = start_jobs(rows=[{"_row": 0, "job_marker": "solo-r0", "tile_id": "A", "year": 2024}],
                             backend="solo", connection_key=config, creator=start_job, label="A")
        job_id = started.rows[0]["id"]
        polled = poll_backend(backend="solo", connection_key=config.model_dump(), jobs={0: [job_id, QUEUED]})
        return started, polled, job_id

    assert not connection_registry._REGISTRY.connections  # nothing registered: the tasks must connect themselves
    started, polled, job_id = somebody_elses_flow()
    assert started.rows[0]["status"] == QUEUED and job_id
    assert polled.backend == "solo" and polled.crashed is None
    assert polled.rows.get(0, {"status": QUEUED})["status"] in BACKEND_STATUSES  # unchanged or moved on
    assert sim.counters()["jobs_total"] == 1 and sim.counters()["requests"].get("GET /jobs 200", 0) >= 1
