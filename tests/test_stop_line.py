"""A stop is told at once and the run creates nothing more (issue 16): the `stopping:` line comes
while the cycle is still busy (at scale a cycle is seconds long), a create batch of a stopping run
sends no more `POST /jobs` and hands its rows back in one answer, and the status lines of a
stopping run are grouped. Real simulator, real Prefect, real signals; the cycle is held busy by
the test holding the account's slot ledger lock (the cycle's claim waits for it)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import List

import pytest
from filelock import FileLock

from flows.config.params import BackendConfig
from flows.rules.polling import PollClock
from flows.run_loop.applying import OutcomeBook
from flows.tiling.demo_callbacks import start_job
from jobdb.status import CREATING, NOT_STARTED
from jobdb.store import JobStore
from simulator import start_simulator
from tasks.accounts.identity import STATE_DIR_ENV
from tasks.outcome import Step, close_inbox, open_inbox, request_stop
from tasks.start import create_jobs
from tests.flow_helpers import backend, fast_config, make_db
from tests.test_interruptions import wait_for
from tests.test_run_outcomes import CALLBACK, harness_env


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def post_jobs(sim) -> int:
    """POST /jobs the simulator answered (its counters are per route and status code)."""
    return sum(n for key, n in sim.counters()["requests"].items() if key.startswith("POST /jobs "))


def recording_logger() -> tuple:
    logger = logging.getLogger(f"test-stop-line-{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    records = Records()
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    return logger, records.records


def test_a_stopping_runs_status_lines_are_grouped_one_record_per_level(tmp_path):
    """A stopping run hands hundreds of rows back in its last cycles; a line (and a Prefect log
    record) per row took seconds of the stop at scale."""
    store = JobStore.open(make_db(tmp_path / "jobs.parquet", 14))
    store.apply({row: {"status": CREATING, "backend_name": "a", "job_marker": f"a-r{row}"} for row in range(14)})
    logger, records = recording_logger()
    changed = []
    book = OutcomeBook(store, PollClock(interval=1.0), logger, set(), 0, on_change=lambda *change: changed.append(change),
                       on_downloaded=lambda items: None, stopping=lambda: True)
    from tasks.outcome import Outcome

    back = {row: {"status": NOT_STARTED, "handed_back": "the run is stopping"} for row in range(12)}
    failed = {row: {"status": "start_failed", "error_message": "start_job callback failed"} for row in (12, 13)}
    book.apply([Outcome(Step.CREATE, "a", back), Outcome(Step.CREATE, "a", failed)])
    lines = [(r.levelno, r.getMessage()) for r in records]
    assert lines == [
        (logging.INFO, "12 rows handed back not_started: row 0, row 1, row 2, row 3, row 4, row 5, row 6, row 7, "
                       "row 8, row 9 (+2 more)"),
        (logging.WARNING, "2 rows creating -> start_failed (first: start_job callback failed): row 12, row 13"),
    ], lines
    assert len(changed) == 14  # events stay one per row
    assert {store.value(row, "status") for row in range(12)} == {NOT_STARTED}
