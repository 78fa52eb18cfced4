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
