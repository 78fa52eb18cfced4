"""The simulator's CDSE-like quotas (route-scoped rate limit, requests in flight, credits) and its
OIDC mode against a real OIDC provider on loopback. No Prefect needed."""
from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys

import openeo
import pytest
import requests
from openeo.rest import OpenEoApiError

from simulator import SimulatorConfig
from tests.oidc_provider import started_provider
from tests.test_simulator import FAST, create_job_raw, make_sim, process_graph, token_headers, wait_until  # noqa: F401

START = "POST /jobs/{id}/results"


def start_raw(sim, headers, job_id: str) -> requests.Response:
    return requests.post(sim.api_url + f"jobs/{job_id}/results", headers=headers)


def test_route_scoped_rate_limit_only_limits_starts(make_sim):
    # a token per 100 s: none comes back between two requests, however slow the machine
    sim = make_sim(rate_limit_per_second=0.01, rate_limit_burst=1, rate_limit_routes=START, retry_after=1, **FAST)
    headers = token_headers(sim)
    ids = [create_job_raw(sim, headers, f"t{i}") for i in range(3)]  # creating is not limited
    assert start_raw(sim, headers, ids[0]).status_code == 202
    refused = start_raw(sim, headers, ids[1])
    assert refused.status_code == 429 and refused.json()["code"] == "TooManyRequests"
    assert 90 <= int(refused.headers["Retry-After"]) <= 100  # the next token, 1 per 100 s
    assert all(requests.get(sim.api_url + "jobs", headers=headers).status_code == 200 for _ in range(5))
    # another user has a bucket of its own
    bob = token_headers(sim, "bob")
    assert start_raw(sim, bob, create_job_raw(sim, bob)).status_code == 202
    counters = sim.counters()
    assert counters["refusals"]["429"] == {START: 1}
    assert counters["faults_injected"]["rate_limit"] == 1
    assert counters["job_starts"] == 2


def test_rate_limit_routes_are_validated(make_sim):
    with pytest.raises(ValueError, match="METHOD /template"):
        SimulatorConfig(rate_limit_routes="/jobs")
    sim = make_sim(**FAST)
    bad = requests.patch(sim.url + "/_sim/config", json={"rate_limit_routes": "FETCH /jobs"})
    assert bad.status_code == 400 and "rate_limit_routes" in bad.json()["message"]
    assert sim.config.rate_limit_routes is None  # a rejected change leaves the config as it was


def test_requests_in_flight_cap_per_user(make_sim):
    sim = make_sim(max_requests_in_flight=2, retry_after=1, **FAST)
    alice, bob = token_headers(sim), token_headers(sim, "bob")
    body = {"process": {"process_graph": process_graph()}}
    sim.gates.close("POST /jobs")  # the two creates stay in progress until the gate opens
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(requests.post, sim.api_url + "jobs", json=body, headers=alice) for _ in range(2)]
        assert sim.gates.wait_held(["POST /jobs"], timeout=30, count=2)
        third = requests.get(sim.api_url + "me", headers=alice)
        other_user = requests.get(sim.api_url + "me", headers=bob)
        sim.gates.open()
        assert [f.result().status_code for f in slow] == [201, 201]
    assert third.status_code == 429 and third.headers["Retry-After"] == "1"
    assert "in progress" in third.json()["message"]
    assert other_user.status_code == 200
    wait_until(lambda: sim.state.quotas.in_flight["alice"] == 0)  # left once each answer was written
    assert requests.get(sim.api_url + "me", headers=alice).status_code == 200  # slots given back
    counters = sim.counters()
    assert counters["faults_injected"]["in_flight"] == 1
    assert counters["peak_in_flight_per_user"]["alice"] == 2
    assert counters["refusals"]["429"] == {"GET /me": 1}


def test_streamed_asset_counts_as_in_flight_until_sent(make_sim):
    sim = make_sim(max_requests_in_flight=1, asset_size=64 * 1024 * 1024, **FAST)
    headers = token_headers(sim)
    job_id = create_job_raw(sim, headers)
    assert start_raw(sim, headers, job_id).status_code == 202
    wait_until(lambda: requests.get(sim.api_url + f"jobs/{job_id}", headers=headers).json()["status"] == "finished")
    with requests.get(sim.api_url + f"jobs/{job_id}/results/assets/openEO.tif", headers=headers, stream=True) as r:
        assert r.status_code == 200
        next(r.iter_content(1024))
        assert requests.get(sim.api_url + "me", headers=headers).status_code == 429
    wait_until(lambda: sim.state.quotas.in_flight["alice"] == 0, timeout=60)
    assert requests.get(sim.api_url + "me", headers=headers).status_code == 200


@pytest.mark.parametrize("checked_on, refused_route", [("start", START), ("create", "POST /jobs"),
                                                       ("create,start", "POST /jobs")])
def test_empty_credit_balance_answers_402(make_sim, checked_on, refused_route):
    sim = make_sim(credits=2, job_cost=1, credits_checked_on=checked_on, **FAST)
    headers = token_headers(sim)
    assert requests.get(sim.api_url + "me", headers=headers).json()["budget"] == 2
    ids = [create_job_raw(sim, headers, f"t{i}") for i in range(2)]
    assert [start_raw(sim, headers, i).status_code for i in ids] == [202, 202]
    assert requests.get(sim.api_url + "me", headers=headers).json()["budget"] == 0
    if checked_on == "start":
        third = create_job_raw(sim, headers, "t3")
        refused = start_raw(sim, headers, third)
    else:
        refused = requests.post(sim.api_url + "jobs", json={"process": {"process_graph": process_graph()}},
                                headers=headers)
    assert refused.status_code == 402 and refused.json()["code"] == "PaymentRequired"
    assert "insufficient" in refused.json()["message"]
    counters = sim.counters()
    assert counters["refusals"]["402"] == {refused_route: 1}
    assert counters["faults_injected"]["payment_required"] == 1
    assert counters["credits_spent_per_user"] == {"alice": 2}
    # bob has credits of his own; more credits let alice go on
    bob = token_headers(sim, "bob")
    assert start_raw(sim, bob, create_job_raw(sim, bob)).status_code == 202
    sim.configure(credits=5)
    assert requests.post(sim.api_url + "jobs", json={"process": {"process_graph": process_graph()}},
                         headers=headers).status_code == 201


def test_402_reaches_openeo_client_as_api_error(make_sim):
    sim = make_sim(credits=0, **FAST)
    con = openeo.connect(sim.url).authenticate_basic("alice", "secret")
    with pytest.raises(OpenEoApiError) as exc:
        con.create_job({"save": {"process_id": "save_result", "arguments": {"data": 1, "format": "GTiff"},
                                 "result": True}})
    assert exc.value.http_status_code == 402 and exc.value.code == "PaymentRequired"


# ------------------------------------------------------------------------------------ OIDC mode
@pytest.fixture
def provider():
    yield from started_provider(access_token_ttl=30)


def test_oidc_mode_lists_provider_and_checks_tokens(make_sim, provider):
    provider.add_client("robot", "robot-secret", ("client_credentials",))
    provider.add_client("openeo-public", None, ("refresh_token", "urn:ietf:params:oauth:grant-type:device_code"))
    sim = make_sim(oidc_issuer=provider.issuer, oidc_provider_id="cdse-like", oidc_default_client_id="openeo-public",
                   basic_auth=False, oidc_cache_seconds=0, **FAST)
    listed = requests.get(sim.api_url + "credentials/oidc").json()["providers"]
    assert [(p["id"], p["issuer"]) for p in listed] == [("cdse-like", provider.issuer)]
    assert listed[0]["default_clients"][0]["id"] == "openeo-public"
    paths = {e["path"] for e in requests.get(sim.api_url).json()["endpoints"]}
    assert "/credentials/oidc" in paths and "/credentials/basic" not in paths
    assert requests.get(sim.api_url + "credentials/basic", auth=("alice", "secret")).status_code == 404

    con = openeo.connect(sim.url).authenticate_oidc_client_credentials(client_id="robot", client_secret="robot-secret")
    assert con.describe_account()["user_id"] == "robot"
    token = con.auth.bearer.split("/")[-1]
    assert con.auth.bearer == f"oidc/cdse-like/{token}"
    wrong_provider = requests.get(sim.api_url + "me", headers={"Authorization": f"Bearer oidc/other/{token}"})
    assert wrong_provider.status_code == 403 and wrong_provider.json()["code"] == "TokenInvalid"
    forged = requests.get(sim.api_url + "me", headers={"Authorization": "Bearer oidc/cdse-like/forged"})
    assert forged.status_code == 403 and forged.json()["code"] == "TokenInvalid"
    refresh_token = provider.issue_refresh_token("openeo-public", "alice")
    alice = openeo.connect(sim.url).authenticate_oidc_refresh_token(refresh_token=refresh_token)
    assert alice.describe_account()["user_id"] == "alice"  # the default client, from /credentials/oidc
    assert sim.counters()["oidc_tokens_per_user"] == {"robot": 1, "alice": 1}


def test_oidc_expired_token_is_refused_and_renewed(make_sim):
    gen = started_provider(access_token_ttl=3)  # only expiry here; 3 s: the renewed token outlives its retry when loaded
    provider = next(gen)
    try:
        provider.add_client("robot", "robot-secret", ("client_credentials",))
        sim = make_sim(oidc_issuer=provider.issuer, oidc_cache_seconds=0, **FAST)
        con = openeo.connect(sim.url).authenticate_oidc_client_credentials(client_id="robot",
                                                                          client_secret="robot-secret")
        first = con.auth.bearer
        stale = {"Authorization": f"Bearer {first}"}
        wait_until(lambda: requests.get(sim.api_url + "me", headers=stale).status_code == 403, timeout=30)
        assert con.describe_account()["user_id"] == "robot"  # openeo renewed on 403 TokenInvalid
        assert con.auth.bearer != first
        assert provider.access_tokens_issued() == {"client_credentials": 2}
        assert sim.counters()["oidc_tokens_per_user"] == {"robot": 2}
    finally:
        next(gen, None)


def test_cli_help_describes_every_option_and_startup_line_names_credentials():
    import dataclasses

    help_text = subprocess.run([sys.executable, "-m", "simulator", "--help"], capture_output=True, text=True,
                               check=True, env={"COLUMNS": "1000", "PATH": ""}).stdout
    described = {}  # flag -> its help entry (the flag's line and the lines below it)
    for entry in re.split(r"\n(?=  -)", help_text.split("options:", 1)[1].strip("\n")):
        described[entry.split()[0].rstrip(",")] = " ".join(entry.split())
    flags = ["--host", "--port", "--verbose"] + ["--" + f.name.replace("_", "-") for f in
                                                 dataclasses.fields(SimulatorConfig)]
    undescribed = [flag for flag in flags
                   if flag not in described or not described[flag].split(flag, 1)[1].split("(default:")[0]
                   .replace(flag[2:].upper().replace("-", "_"), "").strip()]
    assert undescribed == []
    assert "in progress at once" in described["--max-requests-in-flight"]
    proc = subprocess.Popen([sys.executable, "-m", "simulator", "--port", "0", "--basic-auth", "false",
                             "--oidc-issuer", "http://127.0.0.1:9", "--static-token", "tok"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("openEO simulator listening on http://127.0.0.1:")
        line = proc.stdout.readline()
        assert line.startswith("accepts: OIDC bearer tokens of http://127.0.0.1:9 (provider id 'sim-oidc')")
        assert "HTTP Basic" not in line and "static bearer token given by --static-token" in line
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    bad = subprocess.run([sys.executable, "-m", "simulator", "--credits-checked-on", "never"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "credits_checked_on" in bad.stderr


def test_402_is_classified_as_account_cannot_pay(make_sim):
    from tasks.faults import AccountCannotPay, classify

    sim = make_sim(credits=0, credits_checked_on="start", **FAST)
    con = openeo.connect(sim.url).authenticate_basic("alice", "secret")
    job = con.create_job({"save": {"process_id": "save_result", "arguments": {"data": 1, "format": "GTiff"},
                                   "result": True}})
    with pytest.raises(OpenEoApiError) as exc:
        job.start_job()
    kind = classify(exc.value)
    assert isinstance(kind, AccountCannotPay) and "402" in str(kind)
    assert not isinstance(classify(OpenEoApiError(http_status_code=400, code="ConcurrentJobLimit", message="x")),
                          AccountCannotPay)
    assert isinstance(classify(OpenEoApiError(http_status_code=403, code="InsufficientCredits", message="x")),
                      AccountCannotPay)
