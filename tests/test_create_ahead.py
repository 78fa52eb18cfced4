"""Jobs created ahead of free slots (issue 21): a run killed while some wait, created and not
started, leaves them in the job DB; the resume starts each of them exactly once, creates no job
twice, and never has more jobs active than `parallel_jobs`.

The moment is reached by events: the simulator holds every start (simulator/gates.py), so the
run fills its 2 slots with held starts and creates 2 more jobs ahead; the kill (SIGKILL) or the
Ctrl-C (SIGINT to the process group) comes once both starts are held and the DB on disk shows
the 2 jobs created ahead.
"""
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
from tests.flow_helpers import backend, fast_config, make_db

ROOT = Path(__file__).resolve().parents[1]
START_ROUTE = "POST /jobs/{id}/results"
ROWS, SLOTS, AHEAD = 6, 2, 2


def created_ahead_on_disk(db: Path) -> dict:
    """Row -> job id of the rows the DB on disk shows created and not started."""
    try:
        df = pd.read_parquet(db)
    except (OSError, ValueError):
        return {}  # replaced while being read
    ahead = df[(df["status"] == "created") & df["id"].notna()]
    return {int(i): str(j) for i, j in ahead["id"].items()}


def run_in_a_child(sim, tmp_path: Path):
    """A run of ROWS rows (SLOTS slots, AHEAD created ahead) in a process of its own, its own group."""
    db = make_db(tmp_path / "jobs.parquet", ROWS)
    kwargs = dict(job_db=str(db), backends=[{**backend("a", sim, SLOTS), "create_ahead": AHEAD}],
                  start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.25)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
           STATE_DIR_ENV: str(tmp_path / "state")}
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                             env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "child.log", "wb"))
    return db, kwargs, child


def wait_for_held_starts_and_jobs_created_ahead(sim, child, db: Path, deadline: float) -> dict:
    """Until the run's SLOTS starts are held and the DB on disk shows AHEAD jobs created ahead;
    returns those (row -> job id)."""
    while sim.gates.wait_held([START_ROUTE], timeout=0.5, count=SLOTS) is None:
        assert child.poll() is None and time.monotonic() < deadline, "the run never filled its slots"
    ahead = created_ahead_on_disk(db)
    while len(ahead) < AHEAD:
        assert child.poll() is None and time.monotonic() < deadline, "no jobs were created ahead"
        time.sleep(0.05)  # polling a file another process writes; no event crosses processes
        ahead = created_ahead_on_disk(db)
    return ahead


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_run_stopped_while_jobs_are_created_ahead_is_resumed_starting_each_once(prefect_harness, tmp_path, how):
    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3))
    try:
        sim.gates.close(START_ROUTE)
        db, kwargs, child = run_in_a_child(sim, tmp_path)
        deadline = time.monotonic() + 180
        try:
            ahead = wait_for_held_starts_and_jobs_created_ahead(sim, child, db, deadline)
            assert len(ahead) == AHEAD and sim.counters()["jobs_total"] == SLOTS + AHEAD  # bounded: no more
        finally:
            if how == "SIGKILL":
                child.send_signal(signal.SIGKILL)
                child.wait(120)
            else:
                os.killpg(child.pid, signal.SIGINT)  # Ctrl-C in a terminal
                while "stopping:" not in (tmp_path / "child.log").read_text(errors="replace"):
                    assert child.poll() is None and time.monotonic() < deadline, "the run never said it stops"
                    time.sleep(0.05)  # reading another process's log; no event crosses processes
                sim.gates.open()  # the starts in flight complete (a stopping run waits for its tasks)
                child.wait(120)
        ahead_after_stop = created_ahead_on_disk(db)
        assert ahead_after_stop == ahead  # still created, never started: the resume's to start
        sim.gates.open()  # the held starts of the stopped run go on, as on a real backend
        assert sim.gates.wait_drained(30)

        stats = run_jobs(**kwargs)

        df = pd.read_parquet(db)
        counters = sim.counters()
        assert stats["status"] == {"finished": ROWS}
        assert counters["jobs_total"] == ROWS == df["id"].nunique()  # no job created twice
        assert {i: df.at[i, "id"] for i in ahead} == ahead  # the created jobs were adopted, not replaced
        starts = sum(n for k, n in counters["requests"].items() if k.startswith(START_ROUTE + " "))
        assert starts == ROWS, counters["requests"]  # one start request per job: each started exactly once
        assert counters["job_starts"] == ROWS and counters["job_restarts"] == 0
        assert max(counters["max_active_per_user"].values()) <= SLOTS
    finally:
        sim.stop()


def test_the_jobs_a_killed_run_was_starting_hold_their_slots_while_the_resume_looks_them_up(prefect_harness, tmp_path):
    """The run is killed while it creates-and-starts a job for each of its 2 slots (the starts are
    held, the rows still `creating` on disk) and 2 more jobs wait created ahead. Those 2 starts go
    on once it is dead, as on a real backend: 2 jobs run. The resume must count them from their
    `creating` rows until its lookup by marker adopts them; counting them as created ahead (slot-
    free), it started the 2 created jobs beside them: 4 active on a 2-job account."""
    sim = start_simulator(fast_config(queue_time=0.1, run_time=0.3))
    try:
        sim.gates.close(START_ROUTE)
        db, kwargs, child = run_in_a_child(sim, tmp_path)
        deadline = time.monotonic() + 180
        try:
            wait_for_held_starts_and_jobs_created_ahead(sim, child, db, deadline)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(120)
        on_disk = pd.read_parquet(db)
        print("DEBUG", on_disk[["status", "id", "job_marker"]].to_dict("records"))
        assert (on_disk["status"] == "creating").sum() == SLOTS  # the killed run's create-and-start rows
        # The killed run's 2 held starts go on: long jobs, still running while the resume begins
        # (on a machine slow enough that they end first, the test cannot fail, only miss the bug).
        sim.configure(run_time=10.0)
        sim.gates.open()
        assert sim.gates.wait_drained(30)
        while sum(job["status"] == "running" for job in sim.jobs()) < SLOTS:  # a job's run time is set as it runs
            assert time.monotonic() < deadline, sim.jobs()
            time.sleep(0.02)  # the simulator's clock moves them; nothing to wait on
        sim.configure(run_time=0.3)  # the resume's own jobs

        stats = run_jobs(**kwargs)

        df = pd.read_parquet(db)
        counters = sim.counters()
        assert stats["status"] == {"finished": ROWS}
        assert counters["jobs_total"] == ROWS == df["id"].nunique()  # the running ones adopted, none made twice
        print("DEBUG", counters["max_active_per_user"], sim.jobs())
        assert max(counters["max_active_per_user"].values()) <= SLOTS, counters["max_active_per_user"]
    finally:
        sim.stop()
