"""A poll armed ahead of its time (issue 21, flows/rules/polling.py): the poll task lists the jobs
at its time, never earlier, and a run that stops meanwhile gets an empty answer at once, with no
request. The task body runs alone here (`.fn`): no Prefect needed."""
from __future__ import annotations

import time
import uuid

import tasks.poll as poll_module
from flows.config.params import BackendConfig
from flows.tiling.demo_callbacks import start_job
from jobdb.status import QUEUED
from tasks.outcome import close_inbox, open_inbox, request_stop
from tasks.poll import poll_backend
from tasks.start import start_jobs
from tests.flow_helpers import backend


def listings(sim) -> int:
    return sim.counters()["requests"].get("GET /jobs 200", 0)


def a_started_job(sim):
    config = BackendConfig.model_validate(backend("solo", sim, 1)).model_dump()
    started = start_jobs.fn(rows=[{"_row": 0, "job_marker": "solo-r0", "tile_id": "A", "year": 2024}],
                            backend="solo", connection_key=config, creator=start_job, label="A")
    assert started.rows[0]["status"] == QUEUED
    return config, {0: [started.rows[0]["id"], QUEUED]}


def test_an_armed_poll_lists_only_once_its_time_has_come(sim, monkeypatch):
    config, jobs = a_started_job(sim)
    events = []

    def pause(inbox, seconds):  # the wait, recorded instead of slept
        events.append(("wait", seconds, listings(sim)))
        return False

    monkeypatch.setattr(poll_module, "pause", pause)
    before = listings(sim)
    poll_backend.fn(backend="solo", connection_key=config, jobs=jobs, not_before=time.time() + 120)
    assert len(events) == 1 and 100 < events[0][1] <= 120  # it waited for its time ...
    assert events[0][2] == before and listings(sim) == before + 1  # ... before its one listing
    poll_backend.fn(backend="solo", connection_key=config, jobs=jobs, not_before=time.time() - 1)
    assert len(events) == 1 and listings(sim) == before + 2  # its time has passed: at once


def test_a_run_that_stops_while_a_poll_is_armed_gets_an_empty_answer_at_once(sim):
    config, jobs = a_started_job(sim)
    inbox = uuid.uuid4().hex
    queue = open_inbox(inbox)
    try:
        request_stop(inbox)
        before = listings(sim)
        outcome = poll_backend.fn(backend="solo", connection_key=config, jobs=jobs, inbox=f"{inbox}/s1",
                                  not_before=time.time() + 3600)  # an hour ahead: returns only if told to stop
        assert outcome.rows == {} and outcome.crashed is None and listings(sim) == before
        assert queue.get_nowait() == ("s1", outcome)  # the flow hears back, so its stop is not held up
    finally:
        close_inbox(inbox)
