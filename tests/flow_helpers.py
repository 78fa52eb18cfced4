"""Helpers shared by the flow tests: simulated backends, job DBs, result checks."""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pandas as pd

from jobdb import JobDatabase
from simulator import SimulatorConfig, start_simulator

PASSWORD_ENV = "TEST_OPENEO_PASSWORD"
# The stop tests' runs poll every 10 minutes: a stop that waited for the next poll would take
# minutes. Each asserts the stop came long before that (STOP_SECONDS: a bound with room for a
# machine loaded by parallel test sessions, load 20-50), not how fast it was: the <= 3 s target is
# measured by bench/stops.py.
STOP_POLL_SECONDS = 600.0
STOP_SECONDS = 150.0
USER_CALLBACK_ROUTES = ("POST /jobs", "GET /collections/{id}", "GET /processes", "POST /validation")


def fast_config(**knobs) -> SimulatorConfig:
    base = dict(queue_time=0.1, run_time=0.3, seed=7, asset_size=2048)
    base.update(knobs)
    return SimulatorConfig(**base)


def backend(name: str, sim, parallel_jobs: int = 3, user: str = "alice") -> Dict:
    os.environ[PASSWORD_ENV] = sim.config.password
    return {
        "name": name,
        "url": sim.url,
        "parallel_jobs": parallel_jobs,
        "auth": {"type": "basic", "username": user, "password_env": PASSWORD_ENV},
    }


def make_db(path: Path, n: int, **columns) -> Path:
    df = pd.DataFrame({"tile_id": [f"T{i:03d}" for i in range(n)], "year": [2020 + i % 4 for i in range(n)], **columns})
    JobDatabase.create(path, df)
    return path


def manager_requests_per_job(counters: Dict, jobs: int) -> float:
    """Requests the manager itself made (leaving out what the start_job callback does), per job."""
    requests = counters["requests"]
    own = sum(
        count for key, count in requests.items()
        if not key.startswith(tuple(f"{r} " for r in USER_CALLBACK_ROUTES))
        and not key.startswith(("GET / ", "GET /.well-known", "GET /credentials", "GET /me ", "GET /file_formats"))
    )
    return own / jobs


def assert_results_complete(root: Path, df: pd.DataFrame, asset_size: int, asset_count: int = 1) -> None:
    for job_id in df.loc[df["status"] == "finished", "id"]:
        job_dir = root / f"job_{job_id}"
        assets = [p for p in job_dir.iterdir() if not p.name.startswith(("job_", "."))]
        assert len(assets) == asset_count, f"{job_dir}: {assets}"
        assert all(p.stat().st_size == asset_size for p in assets)
        metadata = json.loads((job_dir / f"job_{job_id}.json").read_text())
        assert metadata["id"] == job_id
        assert not list(job_dir.glob("*.part")) and not list(job_dir.glob(".*.part"))


def started_simulators(n: int, **knobs) -> List:
    return [start_simulator(fast_config(**knobs)) for _ in range(n)]


# A user-defined process with one parameter (max_cloud) that no make_db column provides.
UDP_DEFINITION = {
    "id": "ndvi_composite",
    "parameters": [
        {"name": "tile_id", "description": "tile", "schema": {"type": "string"}},
        {"name": "year", "description": "year", "schema": {"type": "integer"}},
        {"name": "max_cloud", "description": "cloud cover limit", "schema": {"type": "number"}},
    ],
    "process_graph": {
        "load": {"process_id": "load_collection",
                 "arguments": {"id": "SENTINEL2_L2A", "spatial_extent": None, "temporal_extent": None}},
        "save": {"process_id": "save_result", "arguments": {"data": {"from_node": "load"}, "format": "GTiff"},
                 "result": True},
    },
}


@contextlib.contextmanager
def serve_json(document: dict) -> Iterator[str]:
    """Serve `document` on a loopback port (e.g. a UDP definition as a process namespace URL)."""
    body = json.dumps(document).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/udp/{document.get('id', 'doc')}.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def recorded_task_runs(flow_run_id, name_like: str, until: Callable[[List], bool], what: str,
                       timeout: float = 120.0) -> List:
    """The task runs of a flow run whose name contains `name_like`, once `until(runs)` holds.

    Prefect 3's server records task runs from the engine's events, a little after they happen (more
    than a little on a loaded machine): a test reading them right after the flow returned may find
    some missing or not yet Completed. It waits for the records it needs; the timeout only guards
    against a hang."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                         task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name_like)))
            if until(runs):
                return runs
            assert time.monotonic() < deadline, f"Prefect never recorded {what}: {[(r.name, r.state_type) for r in runs]}"
            time.sleep(0.2)  # the server's recorder runs in another process: nothing to wait on but its answer


def most_at_once(intervals) -> int:
    """The most (start, end) intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:  # at equal times an end (-1) sorts first: touching intervals do not overlap
        running += step
        peak = max(peak, running)
    return peak


def let_held_jobs_run_and_join(sim, threads: Dict[str, threading.Thread], timeout: float = 600) -> None:
    """Lift the simulator's running cap that held the runs' jobs queued, then wait for every flow
    run thread to end (a thread still alive after `timeout` is a run that never finished)."""
    sim.configure(max_running_per_user=None)
    for thread in threads.values():
        thread.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads.values()), "flow runs did not end in time"
