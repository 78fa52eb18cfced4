"""A Ctrl-C while the backend holds the run's start requests (a start takes ~14 s on CDSE; a
request may wait for its timeout, a minute). The run waits a short grace for its tasks, persists
and ends; the requests still on the wire are cut (tasks/requests_in_flight.py), so neither the
task runner nor the interpreter's exit waits for their answer: before, the exit came only once the
backend answered or the request timed out, then after the start's retries and their back-off.

Also after the time was up: a bounded pass (`max_runtime_minutes`) whose time is up waits for its
running tasks without a bound (their work ends: a start whose POST is out, a download). A Ctrl-C
then bounds that wait as any Ctrl-C does; before, the stop had begun, the signal was not looked at.

Real simulator (its start route held by a gate, opened only after the exit), real Prefect (the
harness's server), a real SIGINT to the process group of a script calling run_jobs(); the request
timeout is longer than the test waits, so only a cut request lets the script exit. The resume
adopts the jobs whose start was cut: none is created twice, never more active than its slots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL

from flows.run_jobs import run_jobs
from simulator import start_simulator
from tasks.accounts import STATE_DIR_ENV
from tasks.retry_policy import REQUEST_TIMEOUT_ENV
from tests.flow_helpers import backend, fast_config, make_db
from tests.test_stop_with_tasks_in_flight import PLAIN_SCRIPT as SCRIPT  # a user's script: exit 130 on RunInterrupted

ROOT = Path(__file__).resolve().parents[1]
START_ROUTE = "POST /jobs/{id}/results"
ROWS, SLOTS = 4, 2
# Long enough for the run to send its first starts before its time is up, on a loaded machine too.
MAX_RUNTIME_MINUTES = 0.1
# A hang detector, not a speed target (a stop takes <= 3 s: bench/stops.py). The child's request
# timeout is longer: a held request that is not cut keeps the script from exiting past this.
EXIT_SECONDS = 45.0
CHILD_REQUEST_TIMEOUT = "300"


def read(log: Path) -> str:
    return log.read_text(errors="replace")


@pytest.mark.parametrize("when", ["running", "after_time_up"])
def test_ctrl_c_while_the_backend_holds_the_starts_exits_without_their_answer(prefect_harness, tmp_path, when):
    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3))
    try:
        sim.gates.close(START_ROUTE)
        db = make_db(tmp_path / "jobs.parquet", ROWS)
        kwargs = dict(job_db=str(db), backends=[backend("a", sim, SLOTS)], start_job="flows.tiling.demo_callbacks:start_job",
                      poll_interval_seconds=0.25)
        bounded = {**kwargs, "max_runtime_minutes": MAX_RUNTIME_MINUTES} if when == "after_time_up" else kwargs
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
               STATE_DIR_ENV: str(tmp_path / "state"), REQUEST_TIMEOUT_ENV: CHILD_REQUEST_TIMEOUT}
        log = tmp_path / "child.log"
        child = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(bounded)], env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        deadline = time.monotonic() + 180
        try:
            while sim.gates.wait_held([START_ROUTE], timeout=0.5, count=SLOTS) is None:
                assert child.poll() is None and time.monotonic() < deadline, read(log)[-3000:]
            if when == "after_time_up":
                while "stopping: time is up" not in read(log):
                    assert child.poll() is None and time.monotonic() < deadline, read(log)[-3000:]
                    time.sleep(0.05)  # reading another process's log; no event crosses processes
            assert sim.gates.held() == {START_ROUTE: SLOTS}

            os.killpg(child.pid, signal.SIGINT)  # Ctrl-C in a terminal
            try:
                code = child.wait(EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the Ctrl-C waited for the held starts:\n{read(log)[-3000:]}") from None
            assert code == 130, read(log)[-3000:]
            assert sim.gates.held() == {START_ROUTE: SLOTS}  # exited while the backend still held them
            assert "Traceback" not in read(log)  # a cut request is the stop's doing, not a failure
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(30)
        sim.gates.open()  # the held starts go on without their client, as on a real backend
        assert sim.gates.wait_drained(30)

        stats = run_jobs(**kwargs)

        df = pd.read_parquet(db)
        counters = sim.counters()
        assert stats["status"] == {"finished": ROWS}
        assert counters["jobs_total"] == ROWS == df["id"].nunique()  # the cut ones adopted, none created twice
        assert counters["job_starts"] == ROWS and counters["job_restarts"] == 0
        assert max(counters["max_active_per_user"].values()) <= SLOTS
    finally:
        sim.stop()
