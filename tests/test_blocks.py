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


@pytest.fixture
def saved_before_class():
    """The OpenEOBackend block as it was saved before it composed `BackendSettings`: every field flat.
    (Prefect's block registry gets OpenEOBackend back afterwards: the two share one slug.)"""
    import warnings
    from typing import Optional

    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import get_registry_for_type
    from pydantic import SecretStr

    registry = get_registry_for_type(OpenEOBackend)
    warnings.filterwarnings("ignore", message="Type 'FlatOpenEOBackend'")

    class FlatOpenEOBackend(Block):
        _block_type_name = "openEO Backend"
        _block_type_slug = "openeo-backend"

        url: str
        parallel_jobs: int = 2
        max_parallel_starts: Optional[int] = None
        max_starts_per_minute: Optional[float] = None
        max_concurrent_requests: Optional[int] = None
        auth_type: str = "none"
        username: Optional[str] = None
        client_id: Optional[str] = None
        provider_id: Optional[str] = None
        password: Optional[SecretStr] = None
        token: Optional[SecretStr] = None
        client_secret: Optional[SecretStr] = None
        refresh_token: Optional[SecretStr] = None

    try:
        yield FlatOpenEOBackend
    finally:
        registry[OpenEOBackend.get_block_type_slug()] = OpenEOBackend


def test_blocks_saved_before_the_backend_was_one_field_still_load(saved_before_class):
    flat = saved_before_class
    flat(url="http://127.0.0.1:9/", parallel_jobs=3, max_starts_per_minute=12, max_concurrent_requests=2,
         auth_type="basic", username="alice", password="s3cret").save("saved-flat", overwrite=True)
    loaded = OpenEOBackend.load("saved-flat")
    config = loaded.to_backend_config("saved-flat")
    assert (config.url, config.parallel_jobs, config.max_starts_per_minute, config.max_concurrent_requests) == \
        ("http://127.0.0.1:9", 3, 12, 2)
    assert (config.auth.type, config.auth.username) == ("basic", "alice")
    assert config.auth.read_secret("password") == "s3cret"

    loaded.save("saved-composed", overwrite=True)  # saved again: in the composed form, the same backend
    again = OpenEOBackend.load("saved-composed")
    assert again.backend == loaded.backend and again.to_backend_config("saved-flat").model_dump() == config.model_dump()
    assert again.secret("password") == "s3cret"


def test_the_block_composes_the_backend_model():
    """The block's backend is `BackendSettings` itself: every field, range and description of an
    inline backend config, none declared twice."""
    from flows.config.params import BackendConfig, BackendSettings

    assert OpenEOBackend.model_fields["backend"].annotation is BackendSettings
    assert set(BackendConfig.model_fields) == set(BackendSettings.model_fields) | {"name"}
    secrets = {name for name in OpenEOBackend.model_fields if name != "backend"}
    assert secrets == {"password", "token", "client_secret", "refresh_token"}
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        OpenEOBackend(backend={"url": "https://openeo.example", "parallel_jobs": 0})
