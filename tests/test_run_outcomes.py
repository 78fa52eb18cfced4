"""Every outcome of a real run (real Prefect, the simulator over HTTP): its exit code and its
Prefect state, one test per row of the README's table; stops in seconds whatever the poll
interval; a broken callback or hook stops burning credits; retrying what failed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pandas as pd
import pytest

from flows.run_loop.outcomes import RunOutcome
from flows.run_jobs import RunFailed, run_jobs
from jobdb import JobDbLock, JobDbPaths
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, STOP_POLL_SECONDS, STOP_SECONDS, backend, fast_config, make_db

ROOT = Path(__file__).resolve().parents[1]
CALLBACK = "flows.tiling.demo_callbacks:start_job"


def cli(db: Path, sim, *extra: str, parallel_jobs: int = 2, poll: str = "0.3") -> List[str]:
    return [sys.executable, "-m", "flows.run_jobs", "--job-db", str(db), "--backend",
            f"a={sim.url},parallel_jobs={parallel_jobs},user=alice,password_env={PASSWORD_ENV}",
            "--start-job", CALLBACK, "--poll-interval", poll, *extra]


def harness_env(**extra: str) -> dict:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def own_prefect_home_env(home: Path, sim, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", **{PASSWORD_ENV: sim.config.password}, **extra)
    return env


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # polling another process's effect (a file), bounded
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def wait_for_jobs(db: Path, child: subprocess.Popen, jobs: int = 2, timeout: float = 900) -> None:
    """Until `jobs` jobs of the child's run are active; on failure, what the child said. `timeout`
    is a bound for hangs: a CLI's own Prefect server took 3.5 min to start under load 50."""
    deadline = time.monotonic() + timeout
    while active(db) < jobs:
        if child.poll() is not None or time.monotonic() > deadline:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            out, err = child.communicate(timeout=30)
            pytest.fail(f"no {jobs} active jobs (exit {child.returncode}):\n{(out or '')[-2000:]}\n{(err or '')[-4000:]}")
        time.sleep(0.1)  # polling another process's effect (the DB file), bounded


def interrupt_once_jobs_run(db: Path, child: subprocess.Popen):
    """SIGINT to the child's process group once its jobs run: (signal time, stdout, stderr, seconds to exit)."""
    wait_for_jobs(db, child)
    t0 = time.monotonic()
    os.killpg(child.pid, signal.SIGINT)
    try:
        out, err = child.communicate(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_SECONDS:.0f} s after SIGINT: the stop waits for the "
                    f"{STOP_POLL_SECONDS:.0f} s poll?")
    return t0, out, err, time.monotonic() - t0


def active(db: Path) -> int:
    try:
        return int(pd.read_parquet(db)["status"].isin(["queued", "running"]).sum())
    except (OSError, ValueError):
        return 0  # not there yet, or being replaced


def latest_flow_run(name_filter: str = "run-jobs"):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
    return [r for r in runs if r.state is not None][0]


def flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


# --- stops: the signal wakes the cycle, whatever the poll interval ---------------------------------
def test_ctrl_c_in_the_cli_with_a_10_min_poll_exits_130_long_before_the_poll(tmp_path, prefect_home):
    """Embedded CLI (its own Prefect server), poll interval 10 min: SIGINT to the process group as
    a terminal sends it. One `stopping:` line, exit 130, the run recorded Cancelled: all long before
    the next poll would have been due (the stop does not wait for the poll)."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=120.0))
    home = prefect_home
    db = make_db(tmp_path / "jobs.parquet", 4)
    child = subprocess.Popen(cli(db, sim, poll=str(STOP_POLL_SECONDS)), env=own_prefect_home_env(home, sim),
                             start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0, out, err, seconds = interrupt_once_jobs_run(db, child)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        sim.stop()
    print(f"\nCtrl-C with --poll-interval {STOP_POLL_SECONDS:.0f}: exit {child.returncode} {seconds:.2f} s after the signal")
    assert child.returncode == 130, err[-3000:]
    assert "stopping: interrupted by SIGINT" in err
    assert "interrupted: 2 jobs still running on backends" in err and "run the same command again to resume" in err
    assert seconds < STOP_SECONDS, f"{seconds:.1f} s"
    assert not JobDbPaths.of(db).lock_holder.exists()  # recorded its own end: no note left for the next run
    from tests.test_interruptions import flow_run_states_in

    assert flow_run_states_in(home) == ["CANCELLED"]


def test_sigint_to_a_script_that_calls_run_jobs_exits_within_seconds(tmp_path, prefect_home):
    """A user's script calling run_jobs() without a Prefect server: Prefect's temporary server is
    in the script's process group, so a terminal's Ctrl-C stops it too. run_jobs() still raises
    RunInterrupted within seconds, the DB persisted, and the run's end is left for the next run
    (its Prefect API could not record it)."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=120.0))
    home = prefect_home
    db = make_db(tmp_path / "jobs.parquet", 4)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK,
                  poll_interval_seconds=STOP_POLL_SECONDS)
    script = tmp_path / "my_script.py"
    script.write_text("import json, sys, time\nfrom flows.run_jobs import RunInterrupted, run_jobs\n"
                      "try:\n    run_jobs(**json.loads(sys.argv[1]))\nexcept RunInterrupted as exc:\n"
                      "    print('interrupted at', time.monotonic(), flush=True)\n    sys.exit(130)\n")
    env = own_prefect_home_env(home, sim)
    child = subprocess.Popen([sys.executable, str(script), json.dumps(kwargs)], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The exit itself is bounded too (STOP_SECONDS): a script that hung at exit restarting
        # Prefect's temporary server waited its start-up timeout (180 s here), not seconds.
        t0, out, err, seconds = interrupt_once_jobs_run(db, child)
        returned = float(out.split("interrupted at")[-1].split()[0]) - t0 if "interrupted at" in out else None
        print(f"\nSIGINT to a run_jobs() script: run_jobs() raised RunInterrupted {returned or float('nan'):.2f} s "
              f"after the signal, the process exited after {seconds:.2f} s (the rest is Python's own teardown)")
        assert child.returncode == 130, (out + err)[-3000:]
        assert "stopping: interrupted by SIGINT" in err
        assert returned is not None and returned < STOP_SECONDS, f"{returned} s"  # not at the next poll
        note = json.loads(JobDbPaths.of(db).lock_holder.read_text())
        # its API went with the Ctrl-C: it leaves its end to the next run of the DB, which records it
        # (tests/test_run_outcomes.py::test_a_run_taking_over_from_a_dead_owner_records_its_end[cancelled])
        assert note["unrecorded_end"] == "Cancelled" and note["flow_run_id"]
        assert pd.read_parquet(db)["status"].isin(["queued", "running"]).sum() == 2  # persisted
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        sim.stop()


@pytest.mark.usefixtures("prefect_harness")
def test_sigterm_to_a_flow_run_process_stops_it_cleanly_in_seconds(tmp_path):
    """What a worker does on Cancel in the UI or on its own shutdown: SIGTERM to the flow-run
    process (then SIGKILL after 30 s). The flow stops as for Ctrl-C and is recorded Cancelled."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=120.0))
    db = make_db(tmp_path / "jobs.parquet", 4)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK,
                  poll_interval_seconds=STOP_POLL_SECONDS)
    log = tmp_path / "child.log"
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                             env=harness_env(**{PASSWORD_ENV: sim.config.password}), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        wait_for(lambda: active(db) >= 2, 300, "two jobs running")
        holder = json.loads(JobDbPaths.of(db).lock_holder.read_text())
        t0 = time.monotonic()
        child.send_signal(signal.SIGTERM)
        wait_for(lambda: not JobDbPaths.of(db).lock_holder.exists(), STOP_SECONDS, "the run to release the DB",
                 0.02)
        released = time.monotonic() - t0  # the run's end: persisted, lock released
        child.wait(STOP_SECONDS)
        seconds = time.monotonic() - t0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        sim.stop()
    print(f"\nSIGTERM to the flow-run process: the run ended (DB released) {released:.2f} s after the signal, the "
          f"process exited after {seconds:.2f} s (the rest is Python's own teardown)")
    assert "stopping: interrupted by SIGTERM" in log.read_text()
    assert released < STOP_SECONDS, f"{released:.1f} s"  # long before the next poll would have been due
    assert flow_run(holder["flow_run_id"]).state.type.value == "CANCELLED"
    assert not JobDbPaths.of(db).lock_holder.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_cancel_in_the_prefect_ui_stops_a_run_no_worker_watches_in_seconds(tmp_path):
    """Cancel in the UI sets the flow run Cancelling through the API. A process worker then sends
    SIGTERM (the test above); a CLI or script run notices by itself and stops as for Ctrl-C."""
    import threading

    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    sim = start_simulator(fast_config(queue_time=0.2, run_time=120.0))
    db = make_db(tmp_path / "jobs.parquet", 4)
    result = {}
    thread = threading.Thread(target=lambda: result.update(state=run_jobs(
        job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK, poll_interval_seconds=STOP_POLL_SECONDS,
        return_state=True)))
    thread.start()
    try:
        wait_for(lambda: active(db) >= 2, 240, "two jobs running")
        run_id = json.loads(JobDbPaths.of(db).lock_holder.read_text())["flow_run_id"]
        t0 = time.monotonic()
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, Cancelling(message="cancelled in the UI"), force=True)
        thread.join(STOP_SECONDS)
        seconds = time.monotonic() - t0
    finally:
        thread.join(120)
        sim.stop()
    print(f"\nCancel through the API: the run ended {seconds:.2f} s later")
    state = result["state"]
    assert state.is_cancelled() and "run the same command again to resume" in state.message
    assert flow_run(run_id).state.type.value == "CANCELLED"
    assert seconds < STOP_SECONDS, f"{seconds:.1f} s"  # long before the next poll would have been due
    assert pd.read_parquet(db)["status"].isin(["queued", "running"]).sum() == 2


@pytest.mark.parametrize("left_in_the_note, recorded", [
    (None, "CRASHED"),
    pytest.param("Cancelled", "CANCELLED", marks=pytest.mark.slow),  # 54 s; the same take-over as the case above
])
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_taking_over_from_a_dead_owner_records_its_end(tmp_path, left_in_the_note, recorded):
    """A SIGKILLed run stays Running in Prefect; the next run of its DB marks it Crashed. A run
    interrupted together with its API (a script's temporary server) leaves `Cancelled` in the
    lock's note instead: the next run records that."""
    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.0))
    db = make_db(tmp_path / "jobs.parquet", 4)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK, poll_interval_seconds=0.3)
    child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                             env=harness_env(**{PASSWORD_ENV: sim.config.password}), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: active(db) >= 1, 240, "a job running")
        note_path = JobDbPaths.of(db).lock_holder
        note = json.loads(note_path.read_text())
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert flow_run(note["flow_run_id"]).state.type.value == "RUNNING"  # what a SIGKILL leaves behind
        if left_in_the_note:  # as flows/owners.record_unrecorded_end leaves it
            note_path.write_text(json.dumps({**note, "unrecorded_end": left_in_the_note, "message": "interrupted"}))
        stats = run_jobs(**kwargs)
    finally:
        sim.stop()
    assert stats["status"] == {"finished": 4}
    state = flow_run(note["flow_run_id"]).state
    assert state.type.value == recorded, state
    if recorded == "CRASHED":
        assert "ended without recording the end of this run" in state.message and "took over job DB" in state.message


# --- the table: one test per row ------------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_outcome_done_exit_0_completed(tmp_path):
    from flows.console.cli import main

    sim = start_simulator(fast_config())
    try:
        os.environ[PASSWORD_ENV] = sim.config.password
        db = make_db(tmp_path / "jobs.parquet", 3)
        assert main(cli(db, sim)[3:]) == RunOutcome.DONE.exit_code == 0
    finally:
        sim.stop()
    state = latest_flow_run().state
    assert state.type.value == "COMPLETED" and state.name == "Completed"


@pytest.mark.usefixtures("prefect_harness")
def test_outcome_failed_exit_1_a_failing_hook_counts_and_its_rerun_with_a_fixed_hook_runs_it(tmp_path):
    """Every on-job-done hook raises: one line per row on the terminal (no tracebacks), counted
    in the stats, exit 1 / Failed. The rerun with the fixed hook runs the hook on those rows."""
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 4)
        env = harness_env(**{PASSWORD_ENV: sim.config.password})
        broken = subprocess.run(cli(db, sim, "--on-job-done", "tests.example_hooks:always_fails", "--json"),
                                env=env, capture_output=True, text=True, timeout=300)
        assert broken.returncode == RunOutcome.FAILED.exit_code == 1, broken.stderr[-3000:]
        stats = json.loads(broken.stdout)
        assert stats["hook_tasks"] >= 4 and stats["hook_failures"] == 4 and stats["outcome"] == "failed"
        assert "Traceback" not in broken.stderr, broken.stderr[-3000:]
        hook_lines = [line for line in broken.stderr.splitlines() if "post-processing hook failed" in line]
        assert len(hook_lines) == 4, broken.stderr[-3000:]
        assert "4 of 4 rows failed in this run, 4 of them in a hook" in broken.stderr
        assert (pd.read_parquet(db)["postprocess_status"] == "failed").all()
        # the rerun is the flow's own doing: in this process (one Python start fewer than a second CLI)
        fixed = run_jobs(job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK, poll_interval_seconds=0.3,
                         on_job_done="tests.example_hooks:mark_done", return_state=True)
    finally:
        sim.stop()
    assert fixed.is_completed() and RunOutcome.of_state(fixed) is RunOutcome.DONE, fixed.message
    df = pd.read_parquet(db)
    assert (df["postprocess_status"] == "done").all()
    assert all((tmp_path / f"job_{job_id}" / "postprocessed.txt").exists() for job_id in df["id"])


@pytest.mark.usefixtures("prefect_harness")
def test_outcome_bad_input_exit_2_failed_before_any_job(tmp_path, capsys, monkeypatch):
    """The command line through its `main` in this process (the real command's exit code 2:
    tests/test_cli.py::test_bad_input_through_the_real_command_exits_2_in_one_line_before_any_server)."""
    from flows.console.cli import main

    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 3)
        monkeypatch.setenv(PASSWORD_ENV, sim.config.password)
        code = main(cli(db, sim, "--max-consecutive-failures", "-1")[3:])
        err = capsys.readouterr().err
        assert code == RunOutcome.BAD_INPUT.exit_code == 2
        assert err.strip().splitlines() == [err.strip()] and "--max-consecutive-failures" in err
        # the flow itself (a deployment run): Failed, nothing created
        state = run_jobs(job_db=str(db), backends=[backend("a", sim, 2)], start_job="no_such_module:start_job",
                         return_state=True)
        assert state.is_failed() and RunOutcome.of_state(state, bad_input=True) is RunOutcome.BAD_INPUT
        assert sim.counters()["jobs_total"] == 0
    finally:
        sim.stop()


@pytest.mark.usefixtures("prefect_harness")
def test_outcome_work_left_exit_3_time_up_and_credits_used_up(tmp_path):
    slow = start_simulator(fast_config(queue_time=0.2, run_time=30.0))
    broke = start_simulator(fast_config(credits=2.0))
    try:
        db = make_db(tmp_path / "jobs.parquet", 4)
        time_up = run_jobs(job_db=str(db), backends=[backend("a", slow, 4)], start_job=CALLBACK,
                           poll_interval_seconds=0.3, max_runtime_minutes=0.02, return_state=True)
        assert time_up.is_completed() and time_up.name == "Incomplete"
        assert RunOutcome.of_state(time_up).exit_code == 3 and "run again to continue" in time_up.message
        db2 = make_db(tmp_path / "credits.parquet", 5)
        os.environ[PASSWORD_ENV] = broke.config.password
        from flows.console.cli import main

        assert main(cli(db2, broke)[3:]) == RunOutcome.WORK_LEFT.exit_code == 3
        state = latest_flow_run().state
        assert state.type.value == "COMPLETED" and state.name == "Incomplete" and "rows left" in state.message
        # 2 jobs used the credits; the 3 rows left never ran: untried, or created ahead (the job
        # exists, never started, costs nothing) and started by the next run once credits are back
        statuses = pd.read_parquet(db2)["status"]
        assert statuses.isin(["not_started", "created"]).sum() == 3, statuses.tolist()
        assert broke.counters()["jobs_total"] - (statuses == "created").sum() == 2
    finally:
        slow.stop()
        broke.stop()


def test_outcome_skipped_exit_75_when_another_run_owns_the_db(prefect_harness, tmp_path):
    """Refused because another live run owns the DB: the CLI exits 75 in one line, the flow (a
    scheduled deployment run) ends Completed named Skipped: no Failed automation fires."""
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 3)
        before = db.read_bytes()
        with JobDbLock(db):
            done = subprocess.run(cli(db, sim), env=harness_env(**{PASSWORD_ENV: sim.config.password}),
                                  capture_output=True, text=True, timeout=600)
            state = run_jobs(job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK, return_state=True)
        assert done.returncode == RunOutcome.SKIPPED.exit_code == 75, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("skipped: job DB")
        assert state.is_completed() and state.name == "Skipped" and not state.is_failed()
        assert f"pid {os.getpid()}" in state.message and state.result()["ended"] == "skipped"
        assert db.read_bytes() == before and sim.counters()["jobs_total"] == 0
    finally:
        sim.stop()


# interrupted (130, Cancelled): the three stop tests above.


# --- thresholds, systematic failures, retries -----------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_a_pass_over_a_campaign_with_old_failures_does_not_end_failed(tmp_path):
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 4, status=["error", "error", "finished", "not_started"],
                     id=["j-1", "j-2", "j-3", None], backend_name=["a", "a", "a", None],
                     results_status=["logs_saved", "logs_saved", "downloaded", None],
                     error_message=["out of memory", "out of memory", None, None])
        state = run_jobs(job_db=str(db), backends=[backend("a", sim, 2)], start_job=CALLBACK,
                         poll_interval_seconds=0.3, return_state=True)
    finally:
        sim.stop()
    stats = state.result()
    assert state.is_completed() and state.name == "Completed", state.message
    assert stats["worked_this_run"] == 1 and stats["failed_this_run"] == 0 and stats["status"]["error"] == 2
    assert "2 error" in state.message and "--retry-failed" in state.message


@pytest.mark.usefixtures("prefect_harness")
def test_a_systematic_callback_error_stops_after_n_rows_then_retry_failed_finishes_them(tmp_path):
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 12)
        common = dict(job_db=str(db), backends=[backend("a", sim, 2)], poll_interval_seconds=0.3)
        with pytest.raises(RunFailed) as failed:
            run_jobs(**common, start_job="tests.broken_callbacks:key_error", max_consecutive_failures=3)
        stats = failed.value.stats
        df = pd.read_parquet(db)
        counts = df["status"].value_counts().to_dict()
        print("\nafter a KeyError in the callback:", counts)
        # Before the 3rd failure is applied, the 2 failed rows' slots may have gone to new rows, and at
        # most parallel_jobs (2) + create_ahead (2 by default) rows are in flight: (3 - 1) + 2 + 2, however fast
        at_most = (3 - 1) + 2 + 2
        assert counts["start_failed"] <= at_most
        assert counts["not_started"] >= 12 - at_most and stats["halted_backends"]["a"].startswith("3 starts in a row")
        assert "KeyError" in stats["halted_backends"]["a"]
        fixed = run_jobs(**common, start_job=CALLBACK, retry_failed=True)
    finally:
        sim.stop()
    assert fixed["status"] == {"finished": 12} and fixed["outcome"] == "done"
    df = pd.read_parquet(db)
    retried = df[df["previous_error"].notna()]
    assert len(retried) == counts["start_failed"] and retried["previous_error"].str.contains("KeyError").all()
    assert sim.counters()["jobs_total"] == 12 and sim.counters()["duplicate_titles"] == {}
