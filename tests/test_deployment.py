"""A real Prefect server, a process work pool, deployments from deployments/prefect.yaml, a worker.

Proves the deployment configuration works from this checkout, that `prefect deployment run -p`
takes JSON values, and that a flow run started that way drives jobs to the end and can be
read back from the server.
"""
from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from tests.flow_helpers import PASSWORD_ENV, assert_results_complete, fast_config, make_db
from tests.prefect_server import PREFECT, ROOT, UUID_RE, PrefectServer

pytestmark = pytest.mark.integration


@pytest.fixture
def server(prefect_harness, tmp_path):
    """The session's Prefect server (`prefect_harness`): what this test proves is the deployment
    configuration, a worker and the runs it starts, not a server start (tests/test_interruptions.py
    starts its own `prefect server`); the CLI commands and the worker run against it."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "prefect-home"
    home.mkdir()
    server = PrefectServer(home, api_url=PREFECT_API_URL.value())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sim():
    from simulator import start_simulator

    sim = start_simulator(fast_config())
    yield sim
    sim.stop()


def wait_for_final_state(api_url: str, flow_run_id: str, timeout: float):
    from prefect.client.orchestration import SyncPrefectClient

    deadline = time.monotonic() + timeout
    with SyncPrefectClient(api_url) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(0.5)
    raise TimeoutError(f"flow run {flow_run_id} not final after {timeout} s (last state: {run.state})")


USER_CALLBACK = '''
"""A user's own start_job callback, in a package of theirs (not in this project)."""


def start_job(row, connection, provider, **kwargs):
    cube = connection.load_collection(
        "SENTINEL2_L2A", spatial_extent={"west": 4.0, "south": 50.5, "east": 4.1, "north": 50.6},
        temporal_extent=[f"{row['year']}-01-01", f"{row['year'] + 1}-01-01"], bands=["B04"])
    return connection.create_job(cube.save_result("GTiff"), title=f"mycallbacks {row['tile_id']}")
'''


def test_deploy_worker_run(server, sim, tmp_path):
    t0 = time.monotonic()
    # The user's callback lives in their own folder, put on the worker's PYTHONPATH
    # (deployments/README.md: "Where your callback code lives").
    user_code = tmp_path / "user-code"
    (user_code / "mycallbacks").mkdir(parents=True)
    (user_code / "mycallbacks" / "__init__.py").write_text("")
    (user_code / "mycallbacks" / "jobs.py").write_text(USER_CALLBACK)
    server.cli("work-pool", "create", "openeo-pool", "--type", "process")
    out = server.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    assert "run-jobs/on-demand" in out and "run-jobs/nightly" in out and "tile-area/tile-area" in out, out
    assert_form_describes_every_parameter(server.api_url, "run-jobs/on-demand")

    worker_log = open(tmp_path / "worker.log", "wb")
    try:
        server.spawn(
            [PREFECT,  # the prefect of this Python (a venv need not be on PATH)
             "worker", "start", "--pool", "openeo-pool", "--type", "process"],
            log=worker_log,
            OPENEO_JOBS_HOME=str(ROOT),
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_PREFETCH_SECONDS="1",
            PYTHONPATH=os.pathsep.join(p for p in (str(user_code), os.environ.get("PYTHONPATH")) if p),
            **{PASSWORD_ENV: sim.config.password},
        )
        db, unset_db = make_db(tmp_path / "jobs.parquet", 6), make_db(tmp_path / "unset.parquet", 6)
        backends = [{"name": "sim", "url": sim.url, "parallel_jobs": 3,
                     "auth": {"type": "basic", "username": "alice", "password_env": PASSWORD_ENV}}]

        def run_parameters(job_db):
            return ["-p", f"job_db={job_db}", "-p", f"backends={json.dumps(backends)}", "-p", "poll_interval_seconds=0.5"]
        # No start_job (the deployment has no default): the run fails at once, saying what is missing.
        # Its own job DB, so that both runs go at once (the worker boots a process for each).
        initial = unset_db.read_bytes()
        out = server.cli("deployment", "run", "run-jobs/on-demand", *run_parameters(unset_db))
        unset_id = UUID_RE.search(out).group(0)
        out = server.cli("deployment", "run", "run-jobs/on-demand", *run_parameters(db),
                         "-p", "start_job=mycallbacks.jobs:start_job")
        flow_run_id = UUID_RE.search(out).group(0)
        unset = wait_for_final_state(server.api_url, unset_id, timeout=600)  # a bound for hangs
        run = wait_for_final_state(server.api_url, flow_run_id, timeout=600)  # a worker boots it: minutes when loaded
    finally:
        worker_log.close()
    log_tail = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    assert unset.state.is_failed(), f"{unset.state}\n{log_tail}"
    assert "give exactly one of start_job" in unset.state.message, unset.state.message
    # at once: before any job was created (the seconds that takes are the machine's, not asserted;
    # the 6 jobs of the sim are the other run's, below)
    assert "start_job" not in unset.parameters and unset_db.read_bytes() == initial
    assert run.state.is_completed(), f"{run.state}\n{log_tail}"
    assert run.parameters["start_job"] == "mycallbacks.jobs:start_job"
    # The parameters arrived typed (the JSON list was parsed), without any secret in them.
    assert run.parameters["backends"][0]["url"] == sim.url
    assert run.parameters["poll_interval_seconds"] == 0.5
    assert sim.config.password not in json.dumps(run.parameters)

    df = pd.read_parquet(db)
    assert (df["status"] == "finished").all(), df["status"].value_counts()
    titles = [job["title"] for job in sim_jobs(sim)]
    assert len(titles) == 6 and all(t.startswith("mycallbacks T") for t in titles), titles  # the user's callback ran
    assert_results_complete(tmp_path, df, asset_size=2048)
    assert max(sim.counters()["max_active_per_user"].values()) <= 3
    print(f"deploy + worker + 6-job run: {time.monotonic() - t0:.1f} s after server start; "
          f"without start_job: {unset.state.name} after {unset.total_run_time.total_seconds():.1f} s: "
          f"{unset.state.message}")


def assert_form_describes_every_parameter(api_url: str, deployment: str) -> None:
    """The deployment's form on the server: every flow parameter typed and described as declared
    in its one home (flows/config/run_parameters.py)."""
    from prefect.client.orchestration import SyncPrefectClient

    from flows.config.run_parameters import RunParameters

    with SyncPrefectClient(api_url) as client:
        form = client.read_deployment_by_name(deployment).parameter_openapi_schema["properties"]
    assert list(form) == list(RunParameters.model_fields)
    for name, field in RunParameters.model_fields.items():
        assert form[name].get("description") == " ".join(field.description.split()), name
        assert any(form[name].get(key) for key in ("type", "anyOf", "$ref", "allOf")), (name, form[name])
    assert form["max_start_workers"]["type"] == "integer" and form["poll_interval_seconds"]["type"] == "number"


def sim_jobs(sim):
    import openeo

    connection = openeo.connect(sim.url).authenticate_basic("alice", sim.config.password)
    return connection.list_jobs()
