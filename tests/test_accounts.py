"""One account identity (accounts/identity.py): computed once when a backend connects, over HTTP
against the simulator (basic auth, and OIDC with a real provider on loopback)."""
from __future__ import annotations

import os

import pytest

from accounts import account_dir, account_id, origin, state_dir
from accounts.identity import STATE_DIR_ENV
from flows.params import BackendConfig
from flows.setup import connect_backend
from simulator import SimulatorConfig, start_simulator
from tests.flow_helpers import backend
from tests.oidc_provider import DEVICE_GRANT, started_provider

PUBLIC_CLIENT = "openeo-public"


def test_origin_is_host_and_port_without_path_scheme_or_default_port():
    assert origin("https://openeo.dataspace.copernicus.eu/openeo/1.2") == "openeo.dataspace.copernicus.eu"
    assert origin("https://OpenEO.Dataspace.Copernicus.eu:443/") == "openeo.dataspace.copernicus.eu"
    assert origin("http://openeo.dataspace.copernicus.eu") == "openeo.dataspace.copernicus.eu"
    assert origin("http://127.0.0.1:8080/openeo/1.2/") == "127.0.0.1:8080"
    assert origin("http://127.0.0.1:8081") != origin("http://127.0.0.1:8080")


def test_user_id_first_then_client_id_then_user_name_then_anonymous():
    url = "https://openeo.dataspace.copernicus.eu/openeo/1.2"
    assert account_id(url, "6f1c0a2e", "cdse-public", None) == "openeo.dataspace.copernicus.eu~6f1c0a2e"
    assert account_id(url, None, "robot", None) == "openeo.dataspace.copernicus.eu~robot"
    assert account_id(url, "", None, "alice") == "openeo.dataspace.copernicus.eu~alice"
    assert account_id(url) == "openeo.dataspace.copernicus.eu~anonymous"
    # safe in a tag, a log line and a folder name: no slashes, spaces or separators from a user id
    assert account_id(url, "a b/c~d") == "openeo.dataspace.copernicus.eu~a_b_c_d"


def test_one_state_folder_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    assert state_dir() == tmp_path
    assert account_dir("127.0.0.1:8080~alice") == tmp_path / "accounts" / "127.0.0.1_8080~alice"


def test_basic_users_path_or_not_one_account_each(sim):
    alice_root = connect_backend(BackendConfig(**backend("a", sim, user="alice")))
    alice_api = connect_backend(BackendConfig(**{**backend("b", sim, user="alice"), "url": sim.url + "/openeo/1.2/"}))
    bob = connect_backend(BackendConfig(**backend("c", sim, user="bob")))
    assert alice_root.account == alice_api.account == f"{origin(sim.url)}~alice"
    assert bob.account == f"{origin(sim.url)}~bob"
    assert alice_root.pacer is alice_api.pacer and bob.pacer is not alice_root.pacer  # pacing uses it too
    assert os.environ[STATE_DIR_ENV]  # conftest: the session's own state folder


@pytest.fixture(scope="module")
def provider():
    yield from started_provider(access_token_ttl=60)


@pytest.fixture(scope="module")
def oidc_sim(provider):
    provider.add_client("robot", "robot-secret", ("client_credentials",))
    provider.add_client(PUBLIC_CLIENT, None, ("refresh_token", DEVICE_GRANT))
    sim = start_simulator(SimulatorConfig(queue_time=0.1, run_time=0.3, oidc_issuer=provider.issuer,
                                          oidc_default_client_id=PUBLIC_CLIENT, basic_auth=False))
    yield sim
    sim.stop()


def test_two_oidc_users_of_one_client_are_two_accounts(oidc_sim, provider, monkeypatch):
    """The old slot key was host + client id: alice and bob, logged in through the same public
    client, shared one ledger. /me tells them apart."""
    accounts = []
    for user in ("alice", "bob"):
        monkeypatch.setenv("ACCOUNTS_TEST_REFRESH", provider.issue_refresh_token(PUBLIC_CLIENT, user))
        connection = connect_backend(BackendConfig(name=user, url=oidc_sim.url, auth={
            "type": "oidc_refresh_token", "client_id": PUBLIC_CLIENT, "refresh_token_env": "ACCOUNTS_TEST_REFRESH"}))
        accounts.append(connection.account)
    assert accounts == [f"{origin(oidc_sim.url)}~alice", f"{origin(oidc_sim.url)}~bob"]


def test_client_credentials_name_the_client_and_never_the_secret(oidc_sim, monkeypatch):
    monkeypatch.setenv("ACCOUNTS_TEST_SECRET", "robot-secret")
    connection = connect_backend(BackendConfig(name="r", url=oidc_sim.url + "/openeo/1.2", auth={
        "type": "oidc_client_credentials", "client_id": "robot", "client_secret_env": "ACCOUNTS_TEST_SECRET"}))
    assert connection.describe_account()["user_id"] == "robot"
    assert connection.account == f"{origin(oidc_sim.url)}~robot"
    assert "secret" not in connection.account
