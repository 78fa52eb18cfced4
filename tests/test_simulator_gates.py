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


def test_many_held_requests_do_not_starve_other_routes():
    """Handlers run in worker threads; more requests held at a gate than a thread pool's usual 40 must all
    be held, and other routes must still answer meanwhile (as on a real backend)."""
    import concurrent.futures

    import requests

    held_count = 48
    sim = start_simulator(SimulatorConfig(queue_time=0.05, run_time=0.1))
    try:
        token = requests.get(sim.api_url + "credentials/basic", auth=("alice", "secret")).json()["access_token"]
        headers = {"Authorization": "Bearer basic//" + token}
        body = {"process": {"process_graph": {"save": {"process_id": "save_result", "arguments": {"data": 1},
                                                       "result": True}}}}
        sim.gates.close("POST /jobs")
        with concurrent.futures.ThreadPoolExecutor(held_count) as pool:
            creates = [pool.submit(requests.post, sim.api_url + "jobs", json=body, headers=headers, timeout=120)
                       for _ in range(held_count)]
            assert sim.gates.wait_held(["POST /jobs"], timeout=60, count=held_count) == "POST /jobs"
            assert requests.get(sim.api_url + "me", headers=headers, timeout=60).status_code == 200
            sim.gates.open()
            assert [f.result().status_code for f in creates] == [201] * held_count
        assert sim.counters()["jobs_total"] == held_count
    finally:
        sim.stop()


def test_a_create_held_over_http_times_out_in_the_client_then_makes_its_job():
    """`/_sim/gates` (for a simulator run as `python -m simulator`): a POST /jobs held past the
    client's timeout gets no answer, and still creates its job when the gate opens."""
    import pytest
    import requests

    sim = start_simulator(SimulatorConfig())
    try:
        control = f"{sim.url.rstrip('/')}/_sim/gates"
        connection = openeo.connect(sim.url).authenticate_basic("alice", "secret")
        assert requests.post(control, json={"close": ["POST /jobs"]}, timeout=10).json() == {"held": {}}
        cube = connection.load_collection("SENTINEL2_L2A")
        connection.default_timeout = 0.5
        with pytest.raises(requests.ReadTimeout):
            connection.create_job(cube, title="late")
        assert requests.get(control, timeout=10).json() == {"held": {"POST /jobs": 1}}
        assert sim.counters()["jobs_total"] == 0
        requests.post(control, json={"open": []}, timeout=10)
        assert sim.gates.wait_drained(30, ["POST /jobs"])
        assert [j["title"] for j in sim.jobs()] == ["late"]
    finally:
        sim.stop()
