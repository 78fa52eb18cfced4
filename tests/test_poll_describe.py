"""A poll that sees a wave of jobs end describes them (usage, costs: one GET /jobs/{id} each)
several at once, so the flow hears of the ends, and frees their slots, after a round trip or
two rather than one per job (issue 21); one job's failure still does not hide the others. The
poll task runs alone (`.fn`) against the simulator; its gates show how many describes are in
flight at once (an event, not a time)."""
from __future__ import annotations

import threading
import time

from flows.config.params import BackendConfig
from flows.tiling.demo_callbacks import start_job
from jobdb.status import ERROR, FINISHED, QUEUED
from tasks.poll import DESCRIBE_WORKERS, poll_backend
from tasks.standalone import connection_for
from tasks.start import start_jobs
from tests.flow_helpers import backend

DESCRIBE = "GET /jobs/{id}"


def test_a_wave_of_ended_jobs_is_described_several_at_once_and_a_missing_one_alone_fails(sim):
    n = DESCRIBE_WORKERS + 1
    config = BackendConfig.model_validate(backend("solo", sim, n)).model_dump()
    started = start_jobs.fn(rows=[{"_row": row, "job_marker": f"solo-r{row}", "tile_id": f"T{row}", "year": 2024}
                                  for row in range(n)], backend="solo", connection_key=config, creator=start_job,
                            label="wave")
    jobs = {row: [fact["id"], QUEUED] for row, fact in started.rows.items()}
    for _ in range(600):  # the simulator ends them on its own (bounded; pacing, not synchronisation)
        if sim.counters()["jobs_by_status"].get("finished", 0) == n:
            break
        time.sleep(0.05)
    gone = jobs[n - 1][0]
    connection_for(config, "solo").delete(f"/jobs/{gone}", expected_status=204)  # gone from the backend
    answer = {}
    sim.gates.close(DESCRIBE)
    poll = threading.Thread(target=lambda: answer.update(outcome=poll_backend.fn(
        backend="solo", connection_key=config, jobs=jobs)))
    poll.start()
    try:
        held = sim.gates.wait_held([DESCRIBE], timeout=60, count=DESCRIBE_WORKERS)
    finally:
        sim.gates.open()
        poll.join(120)
    assert held == DESCRIBE  # DESCRIBE_WORKERS describes were in flight together
    rows = answer["outcome"].rows
    assert all(rows[row]["status"] == FINISHED and rows[row]["metadata"]["id"] == jobs[row][0] for row in range(n - 1))
    assert rows[n - 1]["status"] == ERROR and "no longer exists" in rows[n - 1]["error"]
