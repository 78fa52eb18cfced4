"""What a stop leaves to Prefect's engine after the run: its heartbeat thread ends at the stop, not
up to a second after the run (the engine joins it once the flow function returned; bench/stops.py)."""
from __future__ import annotations

import threading

from prefect import flow
from prefect.runtime import flow_run

from flows.run_loop.interrupts import StopSignal, heartbeat_stopper


def heartbeat_threads() -> list:
    """Prefect's flow-run heartbeat threads (`prefect.flow_engine._send_heartbeats`)."""
    return [t for t in threading.enumerate()
            if getattr((getattr(t, "_args", None) or (None,))[0], "__name__", "") == "heartbeat_loop"]


def beats_for(thread) -> str:
    """The flow run id a heartbeat thread beats for (its loop's closure, as heartbeat_stopper reads it)."""
    loop = thread._args[0]
    cells = dict(zip(loop.__code__.co_freevars, loop.__closure__ or ()))
    try:
        return str(cells["engine"].cell_contents.flow_run.id)
    except (KeyError, ValueError, AttributeError):
        return ""


def test_a_stop_ends_the_flow_runs_heartbeat_thread_before_the_run_returns(prefect_harness):
    seen = {}

    @flow
    def stopping_flow() -> None:
        beating = heartbeat_threads()
        stop = StopSignal()
        stop.wakers.append(heartbeat_stopper(flow_run.id))
        stop.set("interrupted by SIGINT")
        for thread in beating:
            thread.join(30)  # its loop sees the event within a second, unless nothing set it
        seen["beating"], seen["alive_after_stop"] = len(beating), [t.is_alive() for t in beating]

    stopping_flow()
    assert seen["beating"] >= 1  # Prefect still beats on a thread (else this test tests nothing)
    assert seen["alive_after_stop"] == [False] * seen["beating"]


def test_no_heartbeat_thread_of_another_flow_run_is_stopped():
    assert heartbeat_stopper("not-a-flow-run")() is None  # nothing found: a no-op


def test_a_run_that_ends_its_work_ends_its_heartbeat_thread_before_the_flow_returns(prefect_harness, tmp_path,
                                                                                      monkeypatch):
    """Not only a stop: every run's end (issue 21's tail). After the cycle, the thread is told to
    end, so when the flow function returns (final_state is its last step) the engine's join
    finds it gone instead of waiting up to a second for its next 1-s check."""
    import flows.run_jobs as run_jobs_module
    from simulator import start_simulator
    from tests.flow_helpers import backend, fast_config, make_db

    seen = {}
    final_state, stopper = run_jobs_module.final_state, run_jobs_module.heartbeat_stopper

    def noting_stopper(flow_run_id):  # at the run's start: its heartbeat threads (not another test's run's)
        seen["threads"] = [t for t in heartbeat_threads() if beats_for(t) == str(flow_run_id)]
        return stopper(flow_run_id)

    def checking_final_state(*args, **kwargs):
        beating = seen["threads"]
        for thread in beating:
            thread.join(30)  # it ends within a second once told to; never, unless told (heartbeats every 180 s)
        seen["beating"], seen["alive"] = len(beating), [t.is_alive() for t in beating]
        return final_state(*args, **kwargs)

    monkeypatch.setattr(run_jobs_module, "final_state", checking_final_state)
    monkeypatch.setattr(run_jobs_module, "heartbeat_stopper", noting_stopper)
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 1)
        run_jobs_module.run_jobs(job_db=str(db), backends=[backend("a", sim, 1)],
                                 start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.25,
                                 download_results=False)
    finally:
        sim.stop()
    assert seen["beating"] >= 1  # Prefect beats on a thread during the run (else this tests nothing)
    assert seen["alive"] == [False] * seen["beating"]
