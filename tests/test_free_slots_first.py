"""A freed or empty job slot gets its job before anything else is submitted (issue 21): the
dispatcher submits the jobs that go into free slots before the jobs created ahead, so on a pool
of create workers the ones a slot waits for are created and started first."""
from __future__ import annotations

from flows.run_jobs import run_jobs
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config, make_db

ROWS, SLOTS = 6, 2


def test_jobs_for_free_slots_are_created_before_the_jobs_created_ahead(prefect_harness, tmp_path):
    sim = start_simulator(fast_config(create_latency=0.2))
    try:
        db = make_db(tmp_path / "jobs.parquet", ROWS)
        # as many create workers as slots (max_start_workers): one round of creates at a time
        run_jobs(job_db=str(db), backends=[{**backend("a", sim, SLOTS), "create_ahead": SLOTS}],
                 start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.25,
                 max_start_workers=SLOTS, download_results=False)
        state = sim.state
        with state.lock:
            jobs = list(state.jobs.values())
        assert len(jobs) == ROWS and all(job.status == "finished" for job in jobs)
        first_created = sorted(jobs, key=lambda job: job.seq)[:SLOTS]
        first_started = sorted(jobs, key=lambda job: job.queued_at)[:SLOTS]
        # the first round's jobs were created first; the ones created ahead came after them
        assert {job.id for job in first_created} == {job.id for job in first_started}
    finally:
        sim.stop()
