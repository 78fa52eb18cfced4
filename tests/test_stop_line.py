"""A stop is told at once and the run creates nothing more (issue 16): the `stopping:` line comes
while the cycle is still busy (at scale a cycle is seconds long), a create batch of a stopping run
sends no more `POST /jobs` and hands its rows back in one answer, and the status lines of a
stopping run are grouped. Real simulator, real Prefect, real signals; the cycle is held busy by
the test holding the account's slot ledger lock (the cycle's claim waits for it). A batch also
answers the rows it did not try after a 402."""
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


def test_a_stopping_runs_create_batch_sends_no_post_and_hands_its_rows_back_in_one_answer(tmp_path):
    """The task's own code against the simulator (`.fn`: Prefect left out): the run is stopping
    before the batch gets to its rows, so none is created; all come back `not_started` in one
    envelope (one outcome to apply, not one per row)."""
    sim = start_simulator(fast_config())
    inbox = uuid.uuid4().hex
    queue = open_inbox(inbox)
    try:
        config = BackendConfig.model_validate(backend("a", sim, 12)).model_dump()
        rows = [{"_row": row, "job_marker": f"a-r{row}", "tile_id": f"T{row}", "year": 2024} for row in range(12)]
        request_stop(inbox)  # what the stop announcement does at the Ctrl-C
        outcome = create_jobs.fn(rows=rows, backend="a", connection_key=config, creator=start_job, label="T0+11@a",
                                 inbox=f"{inbox}/s1")
        delivered = []
        while not queue.empty():
            delivered.append(queue.get_nowait())
        assert post_jobs(sim) == 0, sim.counters()["requests"]
        assert [submission for submission, _ in delivered] == ["s1"]  # one answer for the whole batch
        answer = delivered[0][1]
        assert answer.step is Step.CREATE and sorted(answer.rows) == list(range(12))
        assert {fact["status"] for fact in answer.rows.values()} == {NOT_STARTED}
        assert outcome.rows == answer.rows
    finally:
        close_inbox(inbox)
        sim.stop()


def test_a_batch_answers_every_row_it_did_not_try_after_the_account_could_not_pay(tmp_path):
    """After a 402 a batch sends nothing more; the rows it did not try are answered too (handed
    back `not_started`, in one envelope). Left out of the inbox, the flow took them for crashed
    rows and looked their jobs up by marker."""
    sim = start_simulator(fast_config(credits=0.0, credits_checked_on="create"))
    inbox = uuid.uuid4().hex
    queue = open_inbox(inbox)
    try:
        config = BackendConfig.model_validate(backend("a", sim, 5)).model_dump()
        rows = [{"_row": row, "job_marker": f"a-r{row}", "tile_id": f"T{row}", "year": 2024} for row in range(5)]
        create_jobs.fn(rows=rows, backend="a", connection_key=config, creator=start_job, label="T0+4@a",
                       inbox=f"{inbox}/s1")
        answered = {}
        while not queue.empty():
            answered.update(queue.get_nowait()[1].rows)
        assert post_jobs(sim) == 1, sim.counters()["requests"]  # the 402; the rest not tried
        assert sorted(answered) == list(range(5)), answered  # every row answered, none left to a lookup
        assert answered[0].get("refused") and all(answered[r]["status"] == NOT_STARTED for r in range(1, 5))
    finally:
        close_inbox(inbox)
        sim.stop()


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


# --- the whole run: a script against the session's Prefect server, SIGINT to it alone ---------
# The script logs filelock's "not acquired, waiting" for the slot ledger: the test's sign that the
# run's cycle waits in its claim (the lock the test holds), i.e. is busy and not reading the stop.
SCRIPT = """import json, logging, sys
from flows.run_jobs import RunInterrupted, run_jobs

class LedgerWaits(logging.Filter):
    def filter(self, record):
        return "ledger.lock" in record.getMessage() and "not acquired" in record.getMessage()

handler = logging.StreamHandler(sys.stderr)
handler.addFilter(LedgerWaits())
handler.setFormatter(logging.Formatter("ledger wait: %(message)s"))
logging.getLogger("filelock").addHandler(handler)
logging.getLogger("filelock").setLevel(logging.DEBUG)
logging.getLogger("filelock").propagate = False  # only these lines, not every lock's
try:
    run_jobs(**json.loads(sys.argv[1]))
except RunInterrupted:
    sys.exit(130)
"""
# Bounds for hangs, generous for a loaded machine (a stop takes <= 3 s: bench/stops.py).
HANG_SECONDS = 300.0
LINE_SECONDS = 60.0


class Child:
    """The script in its own process, its stderr collected line by line."""

    def __init__(self, tmp_path: Path, kwargs: dict, state_dir: Path):
        script = tmp_path / "my_script.py"
        script.write_text(SCRIPT)
        self.process = subprocess.Popen([sys.executable, str(script), json.dumps(kwargs)],
                                        env=harness_env(**{STATE_DIR_ENV: str(state_dir)}), start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: List[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def err(self) -> str:
        return "".join(self.lines)[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.mark.usefixtures("prefect_harness")
def test_the_stopping_line_comes_at_once_while_the_cycle_is_busy(tmp_path):
    """The cycle is held in its slot claim (the test holds the account's ledger lock) when the
    SIGINT comes: the `stopping:` line is out before the cycle can go on; then the run stops as
    always (exit 130), with that one line. Before, the cycle told it, after its claim."""
    sim = start_simulator(fast_config(run_time=2.0))
    rows = 8
    db = make_db(tmp_path / "jobs.parquet", rows)
    state = tmp_path / "state"
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK, poll_interval_seconds=0.5)
    child = Child(tmp_path, kwargs, state)
    lock = None
    try:
        # the run's entry in its account's ledger folder: the run is under way, its cycle claims slots
        wait_for(lambda: list(state.glob("accounts/*/*.slots.json")) or child.process.poll() is not None,
                 HANG_SECONDS, "the run's first claim of job slots")
        assert child.process.poll() is None, child.err()
        ledger = next(state.glob("accounts/*/*.slots.json")).parent / "ledger.lock"
        lock = FileLock(str(ledger), thread_local=False)
        lock.acquire(timeout=HANG_SECONDS)
        # the next claim (a job ended: its slot is free for the next row) waits for the test
        wait_for(lambda: child.said("ledger wait:") or child.process.poll() is not None, HANG_SECONDS,
                 "the cycle to wait for the ledger lock")
        assert child.process.poll() is None, child.err()
        child.process.send_signal(signal.SIGINT)
        # The line cannot come from the cycle while the test holds the lock: any bound shows where
        # it comes from; this one leaves a loaded machine a minute for a line that takes milliseconds.
        wait_for(lambda: child.said("stopping: interrupted by SIGINT"), LINE_SECONDS,
                 "the `stopping:` line while the cycle is busy (is it told by the cycle?)")
        lock.release()  # the cycle goes on: it winds down
        child.process.wait(timeout=HANG_SECONDS)
        child.reader.join(10)
        assert child.process.returncode == 130, child.err()
        assert sum("stopping:" in line for line in child.lines) == 1, child.err()  # the cycle told no second one
    finally:
        if lock is not None and lock.is_locked:
            lock.release()
        child.stop()
        sim.stop()


@pytest.mark.usefixtures("prefect_harness")
def test_a_stopping_run_sends_no_post_jobs_after_its_stopping_line(tmp_path):
    """Create batches in flight at the SIGINT (many rows, few create workers: several rows per
    task run), their first POST /jobs held by the simulator: once the stop is told, the batches
    create nothing more, whatever rows they had left; exactly one job per POST, no title twice."""
    sim = start_simulator(fast_config())
    rows = 40
    db = make_db(tmp_path / "jobs.parquet", rows)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, rows)], start_job=CALLBACK, max_start_workers=1,
                  poll_interval_seconds=600.0)
    sim.gates.close("POST /jobs")
    child = Child(tmp_path, kwargs, tmp_path / "state")
    try:
        assert sim.gates.wait_held(["POST /jobs"], timeout=HANG_SECONDS), f"no create in flight: {child.err()}"
        child.process.send_signal(signal.SIGINT)
        wait_for(lambda: child.said("stopping: interrupted by SIGINT") or child.process.poll() is not None,
                 HANG_SECONDS, "the stopping line")
        held = sim.gates.held().get("POST /jobs", 0)  # the POSTs out at the stop: nothing can add to them now
        sim.gates.open()
        child.process.wait(timeout=HANG_SECONDS)
        child.reader.join(10)
        assert child.process.returncode == 130, child.err()
        # the held ones are counted once handled (a run that cuts its requests at the stop may be gone by then)
        assert sim.gates.wait_drained(HANG_SECONDS, ["POST /jobs"])
        posts = post_jobs(sim)
        assert posts == held, f"{posts} POST /jobs, {held} out at the stop: the batches went on creating"
        assert not sim.counters()["duplicate_titles"]
    finally:
        sim.gates.open()
        child.stop()
        sim.stop()
