"""Where a backend queues jobs behind a per-user cap, the time from a job's start to its end says
little; the time from running to end does (issue 21, flows/rules/polling.py). A poll that sees a
job running hands its backend times (`created`, `updated`) to the poll clock, which expects the
end a run time after it began running. The poll task, the outcome book and the clock are real,
against the simulator; only Prefect is left out (`.fn`)."""
from __future__ import annotations

import logging
import time

import pytest

from flows.config.params import BackendConfig
from flows.rules.polling import EXPECTED_END_MARGIN, PollClock
from flows.run_loop.applying import OutcomeBook
from flows.tiling.demo_callbacks import start_job
from jobdb.status import FINISHED, RUNNING
from jobdb.store import JobStore
from simulator import start_simulator
from tasks.poll import poll_backend
from tasks.start import start_jobs
from tests.flow_helpers import backend, fast_config, make_db

RUN_SECONDS = 1.0


@pytest.fixture
def capped():
    """One job runs at a time per user; the others queue behind it."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=RUN_SECONDS, max_running_per_user=1))
    yield sim
    sim.stop()


def poll_until(book: OutcomeBook, config, store: JobStore, row: int, status: str) -> None:
    """Poll (one listing each) until the row's job is seen in `status` (the simulator gets there
    on its own; bounded, never a fixed sleep as synchronisation)."""
    for _ in range(400):
        job = [store.value(row, "id"), store.value(row, "status")]
        book.polls.poll_sent("solo", time.monotonic())
        book.apply([poll_backend.fn(backend="solo", connection_key=config, jobs={row: job})])
        if store.value(row, "status") == status:
            return
        time.sleep(0.02)  # pacing between listings, not synchronisation
    raise AssertionError(f"row {row} never reached {status}")


def test_a_job_seen_running_is_expected_to_end_a_run_time_after_it_began_running(capped, tmp_path):
    config = BackendConfig.model_validate(backend("solo", capped, 2)).model_dump()
    store = JobStore.open(make_db(tmp_path / "jobs.parquet", 2))
    clock = PollClock(interval=1.0)
    book = OutcomeBook(store, clock, logging.getLogger("test"), set(), 0, on_change=lambda *a: None,
                       on_downloaded=lambda items: None)
    for row in (0, 1):  # both started at once: the second queues behind the first
        store.apply({row: {"status": "creating", "backend_name": "solo"}})
        book.apply([start_jobs.fn(rows=[{"_row": row, "job_marker": f"solo-r{row}", "tile_id": f"T{row}",
                                         "year": 2024}], backend="solo", connection_key=config, creator=start_job,
                                  label=f"T{row}")])
    poll_until(book, config, store, 0, RUNNING)
    assert 0 in clock.running  # seen running, with the backend's times
    poll_until(book, config, store, 0, FINISHED)
    # the run time from the backend's own clock: exact, whatever our polls' phase
    assert clock.run_time == pytest.approx(RUN_SECONDS + EXPECTED_END_MARGIN, abs=0.01)
    poll_until(book, config, store, 1, RUNNING)
    with capped.state.lock:
        job = capped.state.jobs[store.value(1, "id")]
        ends_wall, lag = capped.state.wall(job.finish_at), clock.created[1] - job.created
    # expected at its end (on our clock through its create's answer: late by that answer's lag,
    # never early), not a start-to-end time after its start (that one includes the queue)
    expected_wall = clock.expected_change(1) + clock.wall_offset
    assert expected_wall == pytest.approx(ends_wall + lag + EXPECTED_END_MARGIN, abs=0.01)
    assert clock.expected_change(1) > clock.started[1] + clock.estimate + 0.5
