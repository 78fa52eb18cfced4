"""Backends given as OpenEOBackend block names: the secret stays in the block."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from flows.config.blocks import OpenEOBackend, resolve_backend
from flows.config.params import SetupError
from flows.run_jobs import run_jobs
from simulator import start_simulator
from tests.flow_helpers import fast_config, make_db

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def sim():
    sim = start_simulator(fast_config())
    yield sim
    sim.stop()


def test_run_with_backend_block_name(sim, tmp_path):
    OpenEOBackend(url=sim.url, parallel_jobs=2, auth_type="basic", username="alice",
                  password=sim.config.password).save("sim-block", overwrite=True)
    db = make_db(tmp_path / "jobs.parquet", 4)
    state = run_jobs(job_db=str(db), backends=["sim-block"], start_job="flows.tiling.demo_callbacks:start_job",
                     poll_interval_seconds=0.3, return_state=True)
    assert state.is_completed(), state
    df = pd.read_parquet(db)
    assert (df["status"] == "finished").all() and set(df["backend_name"]) == {"sim-block"}
    assert max(sim.counters()["max_active_per_user"].values()) <= 2

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.parameters["backends"] == ["sim-block"]
    assert sim.config.password not in json.dumps(run.parameters)
    assert sim.config.password not in df.to_json()


def test_block_resolution():
    block = OpenEOBackend(url="http://127.0.0.1:9/", auth_type="oidc_client_credentials", client_id="me",
                          client_secret="s3cret")
    config = block.to_backend_config("cdse")
    assert config.url == "http://127.0.0.1:9" and config.name == "cdse"
    assert "s3cret" not in config.model_dump_json() and "s3cret" not in repr(config)
    assert config.auth.read_secret("client_secret") == "s3cret"  # from the block, without loading it again
    assert block.secret("client_secret") == "s3cret"
    with pytest.raises(SetupError):
        block.secret("password")
    with pytest.raises(SetupError, match="not an OpenEOBackend block"):
        resolve_backend("no-such-block")


def test_inline_dicts_and_blocks_validate_into_one_model():
    inline = resolve_backend({"name": "cdse", "url": "https://openeo.example/", "parallel_jobs": 2,
                              "max_starts_per_minute": 12, "max_concurrent_requests": 2, "auth": {"type": "oidc"}})
    block = OpenEOBackend(url="https://openeo.example/", parallel_jobs=2, max_starts_per_minute=12,
                          max_concurrent_requests=2, auth_type="oidc").to_backend_config("cdse")
    assert type(inline) is type(block)
    assert inline.model_dump() == block.model_dump()
    env = OpenEOBackend(url="https://openeo.example", auth_type="env").to_backend_config("e")
    assert env.auth.type == "env"
    with pytest.raises(ValueError, match="greater than 0"):
        OpenEOBackend(url="https://openeo.example", max_starts_per_minute=-1)
    with pytest.raises(ValueError, match="needs client_id"):
        OpenEOBackend(url="https://openeo.example", auth_type="oidc_client_credentials",
                      client_secret="x").to_backend_config("c")
