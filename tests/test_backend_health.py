"""Silence: a backend that stops answering gets one line when it stops and one when it is back, and
the display shows it as down without a stale ETA (real flow, simulator outage over HTTP)."""
from __future__ import annotations

import logging
import threading
import time

import pandas as pd
import pytest

from flows.console.progress_display import PlainDisplay
from flows.run_jobs import run_jobs
from simulator import start_simulator
from tasks.health import BackendHealth
from tests.flow_helpers import backend, fast_config, make_db


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_health_goes_down_after_failures_in_a_row_and_back_on_an_answer():
    changes = []
    health = BackendHealth("x", down_after=3)
    health.listen(lambda change, h: changes.append((change, h.down_since())))
    health.failed("HTTP 503")
    health.answered()  # one failure, then an answer: nothing to tell
    for _ in range(5):
        health.failed("HTTP 503")
    assert [c for c, _ in changes] == ["down"] and health.down_since() is not None
    health.answered()
    health.answered()
    assert [c for c, _ in changes] == ["down", "back"] and health.down_since() is None


def test_plain_display_shows_a_down_backend_and_no_stale_eta():
    display = PlainDisplay(logging.getLogger("test.display"), every_seconds=3600)
    display.update({"a": {"finished": 2, "running": 3, "not_started": 5}}, 10, 10.0)
    display.update({"a": {"finished": 4, "running": 3, "not_started": 3}}, 10, 20.0)
    line = display.line({"a": {"finished": 4, "running": 3, "not_started": 3}},
                        {"finished": 4, "running": 3, "not_started": 3}, 10, 20.0)
    assert "ETA 30s" in line
    display.update({"a": {"finished": 4, "running": 3, "not_started": 3}}, 10, 25.0, down={"a": time.time() - 5})
    line = display.line({"a": {"finished": 4, "running": 3, "not_started": 3}},
                        {"finished": 4, "running": 3, "not_started": 3}, 10, 25.0)
    assert "ETA unknown: a not answering since" in line and "a: NOT ANSWERING" in line and "ETA 3" not in line


@pytest.mark.usefixtures("prefect_harness")
def test_an_outage_is_told_once_when_it_starts_and_once_when_it_ends(tmp_path):
    sim = start_simulator(fast_config(queue_time=0.2, run_time=3.0))
    lines = Lines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(lines)

    def outage_once_jobs_run():
        while not any(k.startswith("POST /jobs/{id}/results") for k in sim.counters()["requests"]):
            if done.wait(0.05):
                return
        sim.outage(6.0)

    done = threading.Event()
    trigger = threading.Thread(target=outage_once_jobs_run, daemon=True)
    try:
        db = make_db(tmp_path / "jobs.parquet", 4)
        trigger.start()
        stats = run_jobs(job_db=str(db), backends=[backend("flaky", sim, 4)],
                         start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3)
    finally:
        done.set()
        logger.removeHandler(lines)
        sim.stop()
    assert stats["status"] == {"finished": 4}
    assert sim.counters()["faults_injected"]["outage"] >= 3  # the outage happened while the run went on
    down = [line for line in lines.lines if line.startswith("backend flaky is not answering since")]
    back = [line for line in lines.lines if line.startswith("backend flaky is back after")]
    assert len(down) == 1 and len(back) == 1, lines.lines
    assert "failed attempts in a row" in down[0] and "503" in down[0]
    assert lines.lines.index(down[0]) < lines.lines.index(back[0])
    progress = [line for line in lines.lines if "rows/min" in line or "rate:" in line or "ETA" in line]
    shown_down = [line for line in progress if "flaky: NOT ANSWERING" in line]
    assert shown_down and all("ETA unknown" in line for line in shown_down), progress
    assert pd.read_parquet(db)["status"].eq("finished").all()
