"""The simulator's gates (simulator/gates.py): a test holds a route's requests to act at that moment."""
from __future__ import annotations

import threading

import openeo

from simulator import SimulatorConfig, start_simulator


def test_a_closed_gate_holds_the_request_until_it_opens_then_the_request_takes_effect():
    sim = start_simulator(SimulatorConfig(queue_time=0.05, run_time=0.1))
    try:
        connection = openeo.connect(sim.url).authenticate_basic("alice", "secret")
        sim.gates.close("POST /jobs")
        created = {}
        cube = connection.load_collection("SENTINEL2_L2A")
        worker = threading.Thread(target=lambda: created.update(job=connection.create_job(cube, title="held")))
        worker.start()
        assert sim.gates.wait_held(["POST /jobs"], timeout=30) == "POST /jobs"
        # held inside the server: no job yet, other routes still answer
        assert sim.counters()["jobs_total"] == 0
        assert connection.list_jobs() == []
        assert sim.gates.held() == {"POST /jobs": 1}
        sim.gates.open()
        worker.join(30)
        assert sim.gates.wait_drained(30)
        assert sim.counters()["jobs_total"] == 1 and created["job"].job_id
        assert sim.gates.held() == {}
    finally:
        sim.stop()


def test_waiting_for_a_held_request_gives_up_when_none_comes():
    sim = start_simulator(SimulatorConfig())
    try:
        sim.gates.close("POST /jobs")
        assert sim.gates.wait_held(["POST /jobs"], timeout=0.05) is None
        assert sim.gates.wait_drained(1)
    finally:
        sim.stop()
