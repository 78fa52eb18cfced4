"""Interruptions are boring: Ctrl-C, a second run on the same DB, a failed campaign, a bounded
pass, a Prefect server that goes away mid-run. Real simulator over HTTP, real Prefect."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import httpx
import pandas as pd
import pytest

from tasks.accounts import account_id
from tasks.accounts.slots import AccountSlots
from flows.run_jobs import RunFailed, run_jobs
from jobdb import JobDbPaths
from jobdb.lock import JobDbLock
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, STOP_SECONDS, assert_results_complete, backend, fast_config, make_db
from tests.prefect_server import PrefectServer

ROOT = Path(__file__).resolve().parents[1]



def cli_command(db: Path, sim, parallel_jobs: int = 2, *extra: str) -> List[str]:
    return [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), "--backend",
            f"a={sim.url},parallel_jobs={parallel_jobs},user=alice,password_env={PASSWORD_ENV}",
            "--start-job", "flows.tiling.demo_callbacks:start_job", "--poll-interval", "0.3", *extra]


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll another process's effect (a file, the simulator) until it shows, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def active_jobs(db: Path) -> int:
    return int(pd.read_parquet(db)["status"].isin(["queued", "running"]).sum()) if db.exists() else 0


class PeakActive:
    """Watches the simulator's active job count for one account while a run goes on."""

    def __init__(self, sim, user: str = "alice", full: int = 0):
        self.sim, self.user, self.peak, self.full = sim, user, 0, full
        self.started, self.full_after = time.monotonic(), None  # seconds until `full` jobs were active
        self.jobs_before, self.first_new_job_after = sim.counters()["jobs_total"], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.sim.counters()["active_per_user"].get(self.user, 0))
            if self.full and self.full_after is None and self.peak >= self.full:
                self.full_after = time.monotonic() - self.started
            if self.first_new_job_after is None and self.sim.counters()["jobs_total"] > self.jobs_before:
                self.first_new_job_after = time.monotonic() - self.started

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def processes_with_env(name: str, value: str) -> List[int]:
    """Pids of live processes whose environment has name=value (to find leftovers)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def flow_run_states(api_url: str) -> List[str]:
    response = httpx.post(f"{api_url}/flow_runs/filter", json={"limit": 50}, timeout=10)
    response.raise_for_status()
    return [run["state"]["type"] for run in response.json()]


def flow_run_states_in(home: Path) -> List[str]:
    """The states of the flow runs recorded in a PREFECT_HOME's database, once no server runs on it:
    read from the SQLite file itself (starting a server only to read them cost a server start-up)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:
        return [state for (state,) in db.execute("SELECT state_type FROM flow_run ORDER BY created DESC LIMIT 50")]


@pytest.mark.slow  # 115 s; in the default run: test_run_outcomes.py::test_ctrl_c_in_the_cli_with_a_10_min_poll_exits_130_long_before_the_poll and test_create_ahead.py (SIGINT, then the rerun completes)
def test_ctrl_c_in_the_cli_exits_in_seconds_and_the_rerun_completes(tmp_path, prefect_home):
    """Embedded mode (no PREFECT_API_URL): SIGINT to the CLI's process group as a terminal sends
    it. The run stops starting, records Cancelled, exits 130 (within the 60 s bound for a hang; how
    fast: bench/stops.py), leaves no server behind;
    the same command again completes every row with the account's full slots, nothing twice."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=4.0))
    home = prefect_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               **{PASSWORD_ENV: sim.config.password})
    db = make_db(tmp_path / "jobs.parquet", 6)
    child = None
    try:
        child = subprocess.Popen(cli_command(db, sim), env=env, start_new_session=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: active_jobs(db) >= 2, 600, "two jobs running")
        t0 = time.monotonic()
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=600)
        exit_seconds = time.monotonic() - t0
        print(f"\nCtrl-C: exit code {child.returncode} after {exit_seconds:.2f} s")
        assert child.returncode == 130, err[-2000:]
        assert exit_seconds < STOP_SECONDS  # a bound for a hung stop; the line below says it left its jobs running
        assert "interrupted: 2 jobs still running on backends" in err and "run the same command again to resume" in err
        assert processes_with_env("PREFECT_HOME", str(home)) == []  # no server outlived the CLI
        assert not JobDbPaths.of(db).lock_holder.exists()
        # the interrupted run's slots are free at once: a claim made now sees none held by others
        probe = AccountSlots({"a": account_id(sim.url, "alice")}, "probe")
        try:
            assert probe.claim(lambda others: (others, {})) == {"a": 0}
        finally:
            probe.close()

        peak = PeakActive(sim, full=2)
        t1 = time.monotonic()
        rerun = subprocess.run(cli_command(db, sim), env=env, capture_output=True, text=True, timeout=600)
        rerun_seconds = time.monotonic() - t1
        full = peak.stop()
        print(f"rerun: exit {rerun.returncode} in {rerun_seconds:.1f} s, peak active jobs {full} (first reached "
              f"{peak.full_after or float('nan'):.1f} s after the command started, with the adopted jobs), first new "
              f"job {peak.first_new_job_after or float('nan'):.1f} s after it (Prefect server start included)")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert full <= 2
        df = pd.read_parquet(db)
        assert (df["status"] == "finished").all()
        counters = sim.counters()
        assert counters["jobs_total"] == 6 and counters["duplicate_titles"] == {}
        assert_results_complete(tmp_path, df, asset_size=2048)
    finally:
        if child is not None and child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        sim.stop()
    # The interrupted flow run was recorded as Cancelled, not left Running.
    states = flow_run_states_in(home)
    assert sorted(states) == ["CANCELLED", "COMPLETED"], states


@pytest.mark.usefixtures("prefect_harness")
def test_a_second_run_on_the_same_db_refuses_then_waits_when_asked(tmp_path):
    # The first run's starts are held in the simulator (its gate) until the second run has been
    # refused and the third is past its connect: the first run holds the DB then, however slow the
    # machine (3 waves of jobs still to run once the gate opens; the gate, not their length, makes
    # the third run wait).
    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.0))
    sim.gates.close("POST /jobs/{id}/results")
    db = make_db(tmp_path / "jobs.parquet", 8)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                  poll_interval_seconds=0.3)
    first: Dict = {}
    thread = threading.Thread(target=lambda: first.update(stats=run_jobs(**kwargs)))
    peak = PeakActive(sim)
    thread.start()
    try:
        holder = wait_for(lambda: JobDbLock(db).holder(), 600, "the first run to hold the lock")
        assert holder["pid"] == os.getpid() and holder["flow_run_id"]  # the note names the first run
        t0 = time.monotonic()
        refused = run_jobs(**kwargs, return_state=True)  # skipped: a non-failure state, not an exception
        assert refused.is_completed() and refused.name == "Skipped"
        message = refused.message
        print(f"\nrefused in {time.monotonic() - t0:.1f} s: {message}")
        assert f"pid {os.getpid()}" in message and "flow run" in message and "--wait-for-lock" in message
        connects = sim.counters()["requests"].get("GET /me 200", 0)

        def open_gate_once_the_third_run_connected() -> None:
            wait_for(lambda: sim.counters()["requests"].get("GET /me 200", 0) > connects, 600,
                     "the waiting run to connect")
            sim.gates.open()

        opener = threading.Thread(target=open_gate_once_the_third_run_connected, daemon=True)
        opener.start()
        asked = time.monotonic()
        waited = run_jobs(**kwargs, wait_for_lock=True)  # queues behind the first run, then finds it all done
        wall = time.monotonic() - asked
    finally:
        sim.gates.open()
        thread.join(120)
        sim.stop()
    assert peak.stop() <= 3
    assert first["stats"]["status"] == {"finished": 8} and waited["status"] == {"finished": 8}
    assert waited["start_tasks"] == 0
    # the wait for the lock is reported apart from the run's own time, not in it
    assert 0 < waited["lock_wait_seconds"] < wall
    assert waited["elapsed_seconds"] <= wall - waited["lock_wait_seconds"] + 0.05
    counters = sim.counters()
    assert counters["jobs_total"] == 8 and counters["duplicate_titles"] == {}


@pytest.mark.slow  # 59 s; in the default run: test_cli.py::test_a_run_with_failures_exits_1
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_whose_rows_all_fail_ends_failed_and_the_cli_exits_non_zero(tmp_path):
    from prefect.settings import PREFECT_API_URL

    sim = start_simulator(fast_config(p_error=1.0))
    try:
        db = make_db(tmp_path / "jobs.parquet", 3)
        state = run_jobs(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=0.3, return_state=True)
        assert state.is_failed() and "3 of 3 rows failed" in state.message
        outcome = state.result(raise_on_failure=False)
        assert isinstance(outcome, RunFailed) and outcome.stats["status"] == {"error": 3}
        with pytest.raises(RunFailed):  # a plain call raises, so scripts notice too
            run_jobs(job_db=str(make_db(tmp_path / "more.parquet", 1)), backends=[backend("a", sim, 3)],
                     start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}
        db2 = make_db(tmp_path / "cli.parquet", 2)
        done = subprocess.run(cli_command(db2, sim), env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "2 of 2 rows failed" in done.stderr
        tolerated = subprocess.run(cli_command(make_db(tmp_path / "ok.parquet", 2), sim, 2, "--failure-threshold",
                                               "1.0"), env=env, capture_output=True, text=True, timeout=600)
        assert tolerated.returncode == 0, tolerated.stderr[-2000:]
    finally:
        sim.stop()


@pytest.mark.usefixtures("prefect_harness")
def test_two_bounded_passes_finish_what_one_could_not(tmp_path):
    # The jobs stay queued (the simulator runs none) until the second pass: the first one cannot
    # finish any, however fast or slow the machine is.
    sim = start_simulator(fast_config(queue_time=0.2, run_time=0.3, max_running_per_user=0))
    try:
        db = make_db(tmp_path / "jobs.parquet", 4)
        kwargs = dict(job_db=str(db), backends=[backend("a", sim, 4)], start_job="flows.tiling.demo_callbacks:start_job",
                      poll_interval_seconds=0.3)
        first = run_jobs(**kwargs, max_runtime_minutes=0.04)  # 2.4 s
        assert first["ended"] == "time_up" and first["terminal"] == 0
        on_disk = pd.read_parquet(db)["status"]
        started = int(on_disk.isin(["queued", "running"]).sum())
        assert started == sim.counters()["jobs_total"]  # every job it created is in the DB as active
        assert set(on_disk) <= {"queued", "not_started"}, on_disk.value_counts()
        sim.configure(max_running_per_user=None)
        second = run_jobs(**kwargs, max_runtime_minutes=10.0)  # a bound: a loaded machine must still end "done"
        assert second["status"] == {"finished": 4} and second["ended"] == "done"
        assert second["start_tasks"] <= 4 - started  # it adopted the jobs of the first pass
        assert sim.counters()["jobs_total"] == 4 and sim.counters()["duplicate_titles"] == {}
        assert_results_complete(tmp_path, pd.read_parquet(db), asset_size=2048)
    finally:
        sim.stop()


def _outage_run(tmp_path, home: Path, outage_seconds: float) -> None:
    """A `prefect server` stopped mid-run for `outage_seconds`, then started again on the same
    port and database: the openEO side goes on meanwhile and the run completes by itself."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.5))
    server = PrefectServer(home)
    db = make_db(tmp_path / "jobs.parquet", 16)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                  poll_interval_seconds=0.3)
    child = server.spawn([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                         log=open(tmp_path / "child.log", "wb"), PYTHONPATH=str(ROOT),
                         **{PASSWORD_ENV: sim.config.password})
    try:
        wait_for(lambda: active_jobs(db) >= 2, 600, "jobs running")
        server.server.send_signal(signal.SIGTERM)
        server.server.wait(30)
        before = sim.counters()["jobs_total"]
        down_at = time.monotonic()
        # down for at least `outage_seconds`, and until the openEO side has shown it goes on (2 new
        # jobs): how many jobs fit in the outage depends on the machine, that they are made does not
        wait_for(lambda: time.monotonic() - down_at >= outage_seconds and sim.counters()["jobs_total"] - before >= 2,
                 outage_seconds + 600, "jobs created while the Prefect API is down", 0.5)
        during = sim.counters()["jobs_total"] - before
        print(f"\njobs created while the Prefect API was down for {time.monotonic() - down_at:.0f} s: {during}")
        server.server = server.spawn([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                      "127.0.0.1", "--port", str(server.port)], log=server.log, api=False)
        server.wait_healthy(600)  # a bound for hangs: a loaded machine starts it slowly
        assert child.wait(180) == 0, (tmp_path / "child.log").read_text()[-3000:]
        df = pd.read_parquet(db)
        assert (df["status"] == "finished").all()
        counters = sim.counters()
        assert counters["jobs_total"] == 16 and counters["duplicate_titles"] == {}
        assert_results_complete(tmp_path, df, asset_size=2048)
        assert flow_run_states(server.api_url) == ["COMPLETED"]
    finally:
        server.close()
        sim.stop()


@pytest.mark.slow  # 141 s; in the default run: test_the_cli_run_survives_its_prefect_server_being_killed
def test_prefect_server_outage_of_ten_seconds(tmp_path, prefect_home):
    _outage_run(tmp_path, prefect_home, 10.0)


@pytest.mark.slow
def test_prefect_server_outage_of_forty_seconds(tmp_path, prefect_home):
    _outage_run(tmp_path, prefect_home, 40.0)


def server_pids(home: Path) -> List[int]:
    """The CLI's Prefect server processes using this PREFECT_HOME: `prefect server start`, or the
    warmed-up first server that runs it in its own interpreter (flows/console/local_server.py)."""
    pids = []
    for pid in processes_with_env("PREFECT_HOME", str(home)):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"server\0start" in cmdline or b"--serve-when-told" in cmdline:
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_the_cli_run_survives_its_prefect_server_being_killed(tmp_path, prefect_home):
    """SIGKILL of the CLI's Prefect server mid-run: the openEO side goes on, the watchdog starts
    the server again, the run completes by itself and is recorded Completed."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.5))
    home = prefect_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               **{PASSWORD_ENV: sim.config.password})
    db = make_db(tmp_path / "jobs.parquet", 12)
    child = subprocess.Popen(cli_command(db, sim, 3), env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: active_jobs(db) >= 2, 600, "jobs running")
        (victim,) = server_pids(home)
        os.kill(victim, signal.SIGKILL)
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        df = pd.read_parquet(db)
        assert (df["status"] == "finished").all()
        counters = sim.counters()
        assert counters["jobs_total"] == 12 and counters["duplicate_titles"] == {}
        wait_for(lambda: not server_pids(home), 20, "the CLI's server to stop", 0.5)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        sim.stop()
    states = flow_run_states_in(home)
    assert states == ["COMPLETED"], states
