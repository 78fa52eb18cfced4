"""Logging in as openEO users do, against a real OIDC provider on loopback and the simulator in OIDC
mode: `oidc` (openeo's token store; device code only with a terminal), `env` (openeo's OPENEO_AUTH_*
variables), client credentials and refresh token from env vars, Secret blocks and `OpenEOBackend`
blocks, from the CLI's `--backend` too; bad auth input fails before any job is created."""
from __future__ import annotations

import io
import sys
import threading
import time

import pytest
from openeo.rest.auth.config import RefreshTokenStore

from flows.config.backend_spec import parse_backend
from flows.config.blocks import OpenEOBackend
from flows.config.login import login_once_hint
from flows.config.params import BackendConfig, SetupError
from flows.config.setup import connect_backend
from tests.oidc_provider import DEVICE_GRANT, PUBLIC_CLIENT, started_oidc_simulator, started_provider
from tests.test_bad_input import expect_setup_failure
from tests.flow_helpers import make_db



class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def provider():
    yield from started_provider(access_token_ttl=40)


@pytest.fixture
def oidc_sim(provider):
    yield from started_oidc_simulator(provider)


@pytest.fixture
def token_store(tmp_path_factory, monkeypatch):
    """openeo's own refresh-token store, in a directory of this test's (not the user's home)."""
    home = tmp_path_factory.mktemp("openeo-config")
    monkeypatch.setenv("OPENEO_CONFIG_HOME", str(home))
    for name in ("OPENEO_AUTH_METHOD", "OPENEO_AUTH_CLIENT_ID", "OPENEO_AUTH_CLIENT_SECRET", "OPENEO_AUTH_PROVIDER_ID"):
        monkeypatch.delenv(name, raising=False)
    return RefreshTokenStore()


def no_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO())


def oidc_backend(sim, **auth) -> BackendConfig:
    return BackendConfig(name="cdse-like", url=sim.url, auth={"type": "oidc", **auth})


def test_oidc_without_terminal_and_without_stored_token_fails_at_once(oidc_sim, token_store, monkeypatch):
    no_terminal(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(SetupError) as exc:
        connect_backend(oidc_backend(oidc_sim))
    assert time.monotonic() - t0 < 60  # never the device-code poll (5 minutes) in a deployment; bound for a loaded machine
    message = str(exc.value)
    assert "no terminal" in message and login_once_hint(oidc_sim.url) in message
    assert "import openeo; openeo.connect(" in message and "\n" not in message


def test_oidc_device_login_once_with_terminal_then_token_store_without(oidc_sim, provider, token_store, monkeypatch):
    # 1. At a terminal: openeo's device-code flow; the user approves the code "in a browser".
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(sys, "stdout", _Terminal())
    approver = threading.Thread(target=lambda: _approve_first_code(provider, "alice"), daemon=True)
    approver.start()
    connection = connect_backend(oidc_backend(oidc_sim))
    approver.join(300)
    assert connection.describe_account()["user_id"] == "alice"
    assert provider.access_tokens_issued() == {DEVICE_GRANT: 1}
    assert token_store.get_refresh_token(provider.issuer, PUBLIC_CLIENT)  # stored by openeo itself

    # 2. A deployment (no terminal): the stored refresh token, no device code.
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    again = connect_backend(oidc_backend(oidc_sim))
    assert again.describe_account()["user_id"] == "alice"
    assert provider.access_tokens_issued() == {DEVICE_GRANT: 1, "refresh_token": 1}
    assert provider.pending_user_codes() == set()


def _approve_first_code(provider, sub: str) -> None:
    deadline = time.monotonic() + 300  # a bound for hangs: the login asks for its code late on a loaded machine
    while time.monotonic() < deadline:
        codes = provider.pending_user_codes()
        if codes:
            provider.approve(next(iter(codes)), sub)
            return
        time.sleep(0.02)  # polling the provider for the code the login asked for
        time.sleep(0.05)


def test_env_auth_reads_openeos_variables(oidc_sim, token_store, monkeypatch):
    backend = BackendConfig(name="b", url=oidc_sim.url, auth={"type": "env"})
    with pytest.raises(SetupError, match="OPENEO_AUTH_METHOD, OPENEO_AUTH_CLIENT_ID, OPENEO_AUTH_CLIENT_SECRET"):
        connect_backend(backend)
    monkeypatch.setenv("OPENEO_AUTH_METHOD", "password")
    monkeypatch.setenv("OPENEO_AUTH_CLIENT_ID", "robot")
    monkeypatch.setenv("OPENEO_AUTH_CLIENT_SECRET", "robot-secret")
    with pytest.raises(SetupError, match="OPENEO_AUTH_METHOD='password'.*client_credentials"):
        connect_backend(backend)
    monkeypatch.setenv("OPENEO_AUTH_METHOD", "client_credentials")
    monkeypatch.setenv("OPENEO_AUTH_PROVIDER_ID", "sim-oidc")
    assert connect_backend(backend).describe_account()["user_id"] == "robot"
    monkeypatch.setenv("OPENEO_AUTH_CLIENT_SECRET", "wrong")
    with pytest.raises(SetupError, match="authentication \\(env\\) failed"):
        connect_backend(backend)


@pytest.mark.usefixtures("prefect_harness")
def test_client_credentials_and_refresh_token_from_secret_and_backend_blocks(oidc_sim, provider, token_store):
    from prefect.blocks.system import Secret

    Secret(value="robot-secret").save("test-auth-robot-secret", overwrite=True)
    by_secret_block = BackendConfig(name="a", url=oidc_sim.url, auth={
        "type": "oidc_client_credentials", "client_id": "robot", "client_secret_block": "test-auth-robot-secret"})
    assert connect_backend(by_secret_block).describe_account()["user_id"] == "robot"
    refresh_token = provider.issue_refresh_token(PUBLIC_CLIENT, "bob")
    block = OpenEOBackend(url=oidc_sim.url, auth_type="oidc_refresh_token", client_id=PUBLIC_CLIENT,
                          refresh_token=refresh_token, max_starts_per_minute=12, max_concurrent_requests=2)
    connection = block.connect("b")  # the block builds the connection
    assert connection.describe_account()["user_id"] == "bob"
    assert (connection.pacer.max_starts_per_minute, connection.pacer.max_concurrent_requests) == (12, 2)


def test_cli_backend_options_for_every_auth_type():
    spec = parse_backend("cdse=https://openeo.example,parallel_jobs=2,max_starts_per_minute=12,"
                         "max_concurrent_requests=2,auth=oidc,provider_id=CDSE")
    assert spec == {"name": "cdse", "url": "https://openeo.example", "parallel_jobs": 2, "max_starts_per_minute": 12.0,
                    "max_concurrent_requests": 2, "auth": {"type": "oidc", "provider_id": "CDSE"}}
    assert parse_backend("e=http://x,auth=env")["auth"] == {"type": "env"}
    assert parse_backend("c=http://x,client_id=me,client_secret_env=SECRET")["auth"] == {
        "type": "oidc_client_credentials", "client_id": "me", "client_secret_env": "SECRET"}
    assert parse_backend("r=http://x,client_id=me,refresh_token_block=rt")["auth"]["type"] == "oidc_refresh_token"
    assert parse_backend("t=http://x,token_env=T")["auth"]["type"] == "bearer"


@pytest.mark.parametrize("option, words", [
    ("auth=magic", ["--backend", "unknown auth type 'magic'", "oidc, env"]),
    ("auth=oidc_client_credentials,client_secret_env=S", ["--backend", "needs client_id"]),
    ("max_starts_per_minute=-12", ["--backend", "max_starts_per_minute", "greater than 0"]),
    ("max_concurrent_requests=0", ["--backend", "max_concurrent_requests"]),
])
def test_cli_bad_backend_is_one_line_before_anything(tmp_path, capsys, option, words):
    """Through the command line's `main` in this process: a bad `--backend` is refused while the
    flags are read, before any server warms up (the real command's exit code and one line:
    tests/test_cli.py::test_bad_input_through_the_real_command_exits_2_in_one_line_before_any_server)."""
    from flows.console.cli import main

    db = make_db(tmp_path / "jobs.csv", 2)
    before = db.read_bytes()
    code = main(["--job-db", str(db), "--start-job", "flows.tiling.demo_callbacks:start_job",
                 "--backend", f"a=http://127.0.0.1:9,{option}"])
    err = capsys.readouterr().err
    assert code == 2
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in error_lines[0]
    assert db.read_bytes() == before


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("backend_extra, words", [
    ({"auth": {"type": "magic"}}, ["auth.type", "oidc_client_credentials"]),
    ({"auth": {"type": "oidc_refresh_token", "refresh_token_env": "X"}}, ["client_id"]),
    ({"max_starts_per_minute": -1}, ["max_starts_per_minute"]),
])
def test_flow_bad_auth_or_rate_before_any_job(tmp_path, oidc_sim, backend_extra, words):
    db = make_db(tmp_path / "jobs.parquet", 3)
    expect_setup_failure(oidc_sim, db, words, backends=[{"name": "a", "url": oidc_sim.url, **backend_extra}])
