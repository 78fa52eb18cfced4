"""Tests for the local openEO backend simulator (no Prefect needed)."""
from __future__ import annotations

import argparse
import concurrent.futures
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import openeo
import pytest
import requests
from openeo.rest import OpenEoApiError

from simulator import Simulator, SimulatorConfig, start_simulator
from simulator.config import add_cli_arguments, config_from_args
from simulator.results import asset_bytes

FAST = dict(queue_time=0.05, run_time=0.1)
TERMINAL = {"finished", "error", "canceled"}


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; fail with a clear message on timeout (a bound for hangs,
    generous: the machine may be loaded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


@pytest.fixture
def make_sim() -> Callable[..., Simulator]:
    """Factory: start simulators with given knobs on free ports; all are stopped afterwards."""
    started: List[Simulator] = []

    def _make(tick_interval: float = 0.02, **knobs: Any) -> Simulator:
        sim = start_simulator(SimulatorConfig(**knobs), tick_interval=tick_interval)
        started.append(sim)
        return sim

    yield _make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim) -> Simulator:
    return make_sim(**FAST)


def login(sim: Simulator, user: str = "alice", **kwargs: Any) -> openeo.Connection:
    return openeo.connect(sim.url, **kwargs).authenticate_basic(user, "secret")


def token_headers(sim: Simulator, user: str = "alice") -> Dict[str, str]:
    r = requests.get(sim.api_url + "credentials/basic", auth=(user, "secret"))
    r.raise_for_status()
    return {"Authorization": "Bearer basic//" + r.json()["access_token"]}


def process_graph() -> Dict[str, Any]:
    return {
        "load": {"process_id": "load_collection", "arguments": {"id": "SENTINEL2_L2A", "spatial_extent": None,
                                                                 "temporal_extent": None}},
        "save": {"process_id": "save_result", "arguments": {"data": {"from_node": "load"}, "format": "GTiff"},
                 "result": True},
    }


def create_job_raw(sim: Simulator, headers: Dict[str, str], title: str = "t") -> str:
    r = requests.post(sim.api_url + "jobs", json={"process": {"process_graph": process_graph()}, "title": title},
                      headers=headers)
    assert r.status_code == 201, r.text
    return r.headers["OpenEO-Identifier"]


def make_cube(con: openeo.Connection, fmt: str = "GTiff"):
    return con.load_collection(
        "SENTINEL2_L2A",
        spatial_extent={"west": 5.0, "south": 51.0, "east": 5.1, "north": 51.1},
        temporal_extent=["2023-06-01", "2023-07-01"],
        bands=["B04", "B08"],
    ).save_result(fmt)


def wait_status(job, statuses=TERMINAL, timeout: float = 60.0) -> str:
    return wait_until(lambda: (s := job.status()) in statuses and s, timeout=timeout)


# ----------------------------------------------------------------------------- client


def test_full_lifecycle_with_real_openeo_client(make_sim, tmp_path: Path):
    sim = make_sim(asset_count=2, asset_size=5000, max_running_per_user=0, **FAST)  # queued until released below
    con = login(sim)
    assert con.root_url == sim.api_url  # discovered through /.well-known/openeo
    assert con.describe_account()["user_id"] == "alice"
    assert "SENTINEL2_L2A" in con.list_collection_ids()

    job = make_cube(con).create_job(title="lifecycle", description="d")
    assert job.status() == "created"
    job.start_job()
    assert job.status() == "queued"
    sim.configure(max_running_per_user=None)
    assert wait_status(job) == "finished"

    meta = job.describe()
    assert meta["title"] == "lifecycle" and meta["progress"] == 100
    assert meta["process"]["process_graph"]["saveresult1"]["arguments"]["format"] == "GTiff"
    assert meta["usage"]["duration"]["unit"] == "seconds" and isinstance(meta["costs"], float)

    results = job.get_results()
    assets = results.get_metadata()["assets"]
    assert len(assets) == 2
    assert all(a["href"].startswith(sim.api_url) and a["file:size"] == 5000 for a in assets.values())
    paths = [p for p in results.download_files(tmp_path) if p.suffix == ".tif"]
    assert sorted(p.stat().st_size for p in paths) == [5000, 5000]
    name = paths[0].name
    assert paths[0].read_bytes() == b"".join(asset_bytes(job.job_id, name, 0, 5000))

    listed = con.list_jobs()
    assert [j["id"] for j in listed] == [job.job_id]
    assert listed[0]["status"] == "finished"


def test_errored_job_has_error_logs(make_sim):
    sim = make_sim(p_error=1.0, **FAST)
    con = login(sim)
    job = make_cube(con).create_job(title="doomed")
    job.start_job()
    assert wait_status(job) == "error"

    errors = job.logs(level="error")
    assert len(errors) >= 1 and all(e["level"] == "error" for e in errors)
    assert len(errors[0]["message"]) > 20
    info_and_up = job.logs(level="info")
    levels = {e["level"] for e in info_and_up}
    assert "debug" not in levels and {"info", "error"} <= levels
    assert any(e["level"] == "debug" for e in job.logs())

    with pytest.raises(OpenEoApiError) as exc:
        job.get_results().get_metadata()
    assert exc.value.http_status_code == 400 and exc.value.code == "JobNotFinished"
    assert "usage" in job.describe()


def test_transitions_are_exact_without_ticker(make_sim):
    # A ticker that never fires: statuses must still advance lazily on requests.
    sim = make_sim(tick_interval=3600, **FAST)
    con = login(sim)
    job = make_cube(con).create_job()
    job.start_job()
    assert wait_status(job) == "finished"  # long before the ticker (3600 s); the default bound is for a loaded machine


def test_cancel_restart_patch_delete(make_sim):
    sim = make_sim(queue_time=5.0, run_time=0.1)
    con = login(sim)
    job = make_cube(con).create_job(title="old")
    job.start_job()
    job.start_job()  # no-op while queued
    assert job.status() == "queued"
    with pytest.raises(OpenEoApiError) as exc:
        con.patch(f"/jobs/{job.job_id}", json={"title": "new"}, expected_status=204)
    assert exc.value.code == "JobLocked"
    job.stop_job()
    assert job.status() == "canceled"

    sim.configure(queue_time=0.05)
    con.patch(f"/jobs/{job.job_id}", json={"title": "new"}, expected_status=204)
    job.start_job()  # restart from a terminal state
    assert wait_status(job) == "finished"
    assert job.describe()["title"] == "new"
    assert sim.counters()["job_restarts"] == 1

    job.delete()
    with pytest.raises(OpenEoApiError) as exc:
        job.status()
    assert exc.value.http_status_code == 404 and exc.value.code == "JobNotFound"


# ------------------------------------------------------------------------------- assets


def test_range_download_and_head(make_sim):
    sim = make_sim(asset_size=3000, **FAST)
    headers = token_headers(sim)
    job_id = create_job_raw(sim, headers)
    assert requests.post(sim.api_url + f"jobs/{job_id}/results", headers=headers).status_code == 202
    wait_until(lambda: requests.get(sim.api_url + f"jobs/{job_id}", headers=headers).json()["status"] == "finished")
    href = requests.get(sim.api_url + f"jobs/{job_id}/results", headers=headers).json()["assets"]["openEO.tif"]["href"]
    full = requests.get(href, headers=headers)
    assert full.status_code == 200 and len(full.content) == 3000
    assert full.headers["Content-Length"] == "3000" and full.headers["Accept-Ranges"] == "bytes"

    part = requests.get(href, headers={**headers, "Range": "bytes=1000-1499"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == "bytes 1000-1499/3000"
    assert part.headers["Content-Length"] == "500" and part.content == full.content[1000:1500]
    tail = requests.get(href, headers={**headers, "Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == full.content[-100:]
    assert requests.get(href, headers={**headers, "Range": "bytes=5000-"}).status_code == 416

    head = requests.head(href, headers=headers)
    assert head.status_code == 200 and head.headers["Content-Length"] == "3000" and head.content == b""
    assert requests.get(href).status_code == 401  # same-origin assets need the token


def test_foreign_asset_host_records_authorization(make_sim, tmp_path: Path):
    foreign = make_sim()
    sim = make_sim(asset_host=foreign.url, asset_size=777, **FAST)
    con = login(sim)
    job = make_cube(con).create_job()
    job.start_job()
    wait_status(job)
    href = job.get_results().get_metadata()["assets"]["openEO.tif"]["href"]
    assert href.startswith(foreign.url + "/_assets/")

    assert requests.get(href).content == b"".join(asset_bytes(job.job_id, "openEO.tif", 0, 777))
    requests.get(href, headers={"Authorization": "Bearer basic//x"})
    assert [had for _, had in foreign.asset_requests] == [False, True]
    assert sim.asset_requests == []

    paths = [p for p in job.get_results().download_files(tmp_path) if p.suffix == ".tif"]
    assert [p.stat().st_size for p in paths] == [777]
    by_client = foreign.asset_requests[2:]
    assert len(by_client) >= 1  # the client fetched from the foreign host
    # openeo 0.53 does not leak the bearer token to another origin.
    assert not any(had for _, had in by_client)


# ------------------------------------------------------------------------------- faults


def test_429_with_retry_after(make_sim):
    sim = make_sim(p_429=1.0, retry_after=7, **FAST)
    con = login(sim)  # GETs are unaffected by p_429
    with pytest.raises(OpenEoApiError) as exc:
        make_cube(con).create_job()
    assert exc.value.http_status_code == 429 and exc.value.code == "TooManyRequests"
    r = requests.post(sim.api_url + "jobs", json={"process": {"process_graph": process_graph()}},
                      headers=token_headers(sim))
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert r.json()["code"] == "TooManyRequests"
    assert sim.counters()["jobs_total"] == 0
    assert sim.counters()["faults_injected"]["429"] == 2


def test_429_without_retry_after(make_sim):
    sim = make_sim(p_429=1.0, retry_after=None, **FAST)
    r = requests.post(sim.api_url + "jobs", json={"process": {"process_graph": process_graph()}},
                      headers=token_headers(sim))
    assert r.status_code == 429 and "Retry-After" not in r.headers


def test_rate_limit_token_bucket(make_sim):
    # a token per 100 s: none comes back during the test, however slow the machine (at 0.5/s one did)
    sim = make_sim(rate_limit_per_second=0.01, rate_limit_burst=3, retry_after=1, **FAST)
    headers = token_headers(sim)  # the login itself takes one token from alice's bucket
    codes = [requests.get(sim.api_url + "me", headers=headers).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]
    r = requests.get(sim.api_url + "me", headers=headers)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # Other users have their own bucket.
    assert requests.get(sim.api_url + "me", headers=token_headers(sim, "bob")).status_code == 200
    sim.configure(retry_after=None)
    r = requests.get(sim.api_url + "me", headers=headers)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert sim.counters()["faults_injected"]["rate_limit"] >= 4


def test_5xx_injection(make_sim):
    sim = make_sim(seed=1, **FAST)
    con = login(sim, retry=False)
    headers = token_headers(sim)
    sim.configure(p_5xx=1.0)
    statuses = set()
    for _ in range(20):
        r = requests.get(sim.api_url + "me", headers=headers)
        assert r.json()["code"] in {"Internal", "BadGateway", "ServiceUnavailable"}
        statuses.add(r.status_code)
    assert statuses <= {500, 502, 503} and len(statuses) >= 2
    with pytest.raises(OpenEoApiError) as exc:
        con.describe_account()
    assert exc.value.http_status_code >= 500
    assert requests.get(sim.url + "/_sim/counters").status_code == 200  # control routes never fault
    sim.configure(p_5xx=0.0)
    assert con.describe_account()["user_id"] == "alice"
    assert sim.counters()["faults_injected"]["5xx"] == 21


def test_lost_response_creates_job_anyway(make_sim):
    sim = make_sim(p_lost_response=1.0, **FAST)
    con = login(sim)
    with pytest.raises(OpenEoApiError) as exc:
        make_cube(con).create_job(title="ghost")
    assert exc.value.http_status_code == 502
    sim.configure(p_lost_response=0.0)
    jobs = con.list_jobs()
    assert [j["title"] for j in jobs] == ["ghost"] and jobs[0]["status"] == "created"
    c = sim.counters()
    assert c["jobs_total"] == 1 and c["faults_injected"]["lost_response"] == 1
    assert c["requests"]["POST /jobs 502"] == 1 and "POST /jobs 201" not in c["requests"]

    # A lost start response: the job is started although the client saw a 502.
    sim.configure(p_lost_response=1.0)
    job = con.job(jobs[0]["id"])
    with pytest.raises(OpenEoApiError):
        job.start_job()
    sim.configure(p_lost_response=0.0)
    assert job.status() in {"queued", "running", "finished"}


def test_outage_then_recovery(make_sim):
    sim = make_sim(**FAST)
    con = login(sim, retry=False)
    sim.outage(0.5)
    r = requests.get(sim.api_url)
    assert r.status_code == 503 and r.json()["code"] == "ServiceUnavailable"
    with pytest.raises(OpenEoApiError) as exc:
        con.describe_account()
    assert exc.value.http_status_code == 503
    assert requests.get(sim.url + "/_sim/counters").status_code == 200
    wait_until(lambda: requests.get(sim.api_url).status_code == 200, timeout=30)
    assert con.describe_account()["user_id"] == "alice"
    assert sim.counters()["faults_injected"]["outage"] >= 2


def test_outage_over_http_control_route(make_sim):
    sim = make_sim(**FAST)
    assert requests.post(sim.url + "/_sim/outage", json={"seconds": 30}).status_code == 200
    assert requests.get(sim.url + "/.well-known/openeo").status_code == 503
    requests.patch(sim.url + "/_sim/config", json={"outage_until": None})
    assert requests.get(sim.url + "/.well-known/openeo").status_code == 200


# -------------------------------------------------------------------------------- auth


def test_auth_errors_and_token_expiry(make_sim):
    # 5 s: a fresh token must still be good for the call right after the login on a loaded machine
    sim = make_sim(token_ttl=5.0, static_token="let-me-in", **FAST)
    assert requests.get(sim.api_url + "me").json()["code"] == "AuthenticationRequired"
    assert requests.get(sim.api_url + "me").status_code == 401
    bad = requests.get(sim.api_url + "credentials/basic", auth=("alice", "wrong"))
    assert bad.status_code == 403 and bad.json()["code"] == "CredentialsInvalid"
    r = requests.get(sim.api_url + "me", headers={"Authorization": "Bearer basic//nope"})
    assert r.status_code == 403 and r.json()["code"] == "TokenInvalid"

    con = login(sim)
    assert con.describe_account()["user_id"] == "alice"
    assert "alice" in sim.users

    def expired() -> bool:
        try:
            con.describe_account()
            return False
        except OpenEoApiError as e:
            assert e.http_status_code == 403 and e.code == "TokenInvalid"
            return True

    wait_until(expired, timeout=30)
    con.authenticate_basic("alice", "secret")
    assert con.describe_account()["user_id"] == "alice"
    static = requests.get(sim.api_url + "me", headers={"Authorization": "Bearer basic//let-me-in"})
    assert static.json()["user_id"] == "static"


def test_jobs_are_private_per_user(make_sim):
    sim = make_sim(**FAST)
    job_id = create_job_raw(sim, token_headers(sim, "alice"))
    r = requests.get(sim.api_url + f"jobs/{job_id}", headers=token_headers(sim, "bob"))
    assert r.status_code == 404 and r.json()["code"] == "JobNotFound"
    assert requests.get(sim.api_url + "jobs", headers=token_headers(sim, "bob")).json()["jobs"] == []


# ----------------------------------------------------------------------------- listing


def test_listing_pagination_follows_next_links(make_sim):
    sim = make_sim(**FAST)
    headers = token_headers(sim)
    created = [create_job_raw(sim, headers, title=f"job{i}") for i in range(5)]

    url, pages, seen = sim.api_url + "jobs?limit=2", 0, []
    while url:
        body = requests.get(url, headers=headers).json()
        pages += 1
        assert len(body["jobs"]) <= 2
        seen += [j["id"] for j in body["jobs"]]
        url = next((link["href"] for link in body["links"] if link["rel"] == "next"), None)
    assert pages == 3
    assert seen == list(reversed(created))  # newest first, no duplicates

    everything = requests.get(sim.api_url + "jobs", headers=headers).json()
    assert len(everything["jobs"]) == 5 and not everything["links"]
    assert set(everything["jobs"][0]) >= {"id", "status", "created", "updated", "title", "description"}

    sim.configure(listing_max_page=3)
    capped = requests.get(sim.api_url + "jobs?limit=100", headers=headers).json()
    assert len(capped["jobs"]) == 3 and capped["links"][0]["rel"] == "next"
    assert requests.get(sim.api_url + "jobs?limit=0", headers=headers).status_code == 400


# --------------------------------------------------------------------------- lifecycle


def test_per_user_running_cap_is_respected(make_sim):
    # Jobs stay queued (cap 0) until every start is in, however slowly the machine sends them.
    sim = make_sim(max_running_per_user=0, queue_time=0.02, run_time=0.25)
    headers = token_headers(sim)
    ids = [create_job_raw(sim, headers, title=f"c{i}") for i in range(5)]
    for job_id in ids:
        assert requests.post(sim.api_url + f"jobs/{job_id}/results", headers=headers).status_code == 202
    bob = token_headers(sim, "bob")
    bob_job = create_job_raw(sim, bob)
    assert requests.post(sim.api_url + f"jobs/{bob_job}/results", headers=bob).status_code == 202
    assert sim.counters()["max_active_per_user"] == {"alice": 5, "bob": 1}
    sim.configure(max_running_per_user=2)

    max_seen = 0

    def all_done() -> bool:
        nonlocal max_seen
        jobs = requests.get(sim.api_url + "jobs", headers=headers).json()["jobs"]
        max_seen = max(max_seen, sum(j["status"] == "running" for j in jobs))
        bobs = requests.get(sim.api_url + "jobs", headers=bob).json()["jobs"]
        return all(j["status"] == "finished" for j in jobs + bobs)

    wait_until(all_done, timeout=60)
    assert max_seen <= 2  # what a client saw; the exact peak is the counter below
    c = sim.counters()
    assert c["max_running_seen_per_user"] == {"alice": 2, "bob": 1}
    assert c["max_active_per_user"]["alice"] == 5
    assert c["active_per_user"]["alice"] == 0

    # FIFO: jobs started running in the order they were queued.
    def started_at(job_id: str) -> str:
        logs = requests.get(sim.api_url + f"jobs/{job_id}/logs", headers=headers).json()["logs"]
        return next(e["time"] for e in logs if "started running" in e["message"])

    starts = [started_at(j) for j in ids]
    assert starts == sorted(starts)


def test_seed_makes_outcomes_reproducible(make_sim):
    def outcomes(sim: Simulator) -> List[str]:
        headers = token_headers(sim)
        ids = [create_job_raw(sim, headers) for _ in range(8)]
        for job_id in ids:
            requests.post(sim.api_url + f"jobs/{job_id}/results", headers=headers)
        return wait_until(lambda: (s := [requests.get(sim.api_url + f"jobs/{j}", headers=headers).json()["status"]
                                         for j in ids]) and all(x in TERMINAL for x in s) and s)

    a = outcomes(make_sim(seed=42, p_error=0.5, queue_time=0.01, run_time=0.05))
    b = outcomes(make_sim(seed=42, p_error=0.5, queue_time=0.01, run_time=0.05))
    assert a == b and set(a) == {"finished", "error"}


# ---------------------------------------------------------------------------- counters


def test_counters_by_route_template_duplicates_and_reset(make_sim):
    sim = make_sim(**FAST)
    headers = token_headers(sim)
    a = create_job_raw(sim, headers, title="dup")
    create_job_raw(sim, headers, title="dup")
    create_job_raw(sim, headers, title="single")
    requests.get(sim.api_url + f"jobs/{a}", headers=headers)
    requests.get(sim.api_url + "jobs/does-not-exist", headers=headers)
    requests.post(sim.api_url + f"jobs/{a}/results", headers=headers)

    c = requests.get(sim.url + "/_sim/counters").json()
    assert c["requests"]["POST /jobs 201"] == 3
    assert c["requests"]["GET /jobs/{id} 200"] == 1
    assert c["requests"]["GET /jobs/{id} 404"] == 1
    assert c["requests"]["POST /jobs/{id}/results 202"] == 1
    assert c["duplicate_titles"] == {"alice": {"dup": 2}}
    assert c["jobs_total"] == 3 and c["jobs_per_user"] == {"alice": 3}
    assert c["max_active_per_user"] == {"alice": 1}
    assert sum(c["jobs_by_status"].values()) == 3 and c["jobs_by_status"]["created"] == 2

    sim.reset()
    c = sim.counters()
    assert c["jobs_total"] == 0 and c["requests"] == {} and c["duplicate_titles"] == {}
    assert requests.get(sim.api_url + f"jobs/{a}", headers=headers).status_code == 404  # tokens survive reset
    create_job_raw(sim, headers)
    assert requests.post(sim.url + "/_sim/reset").status_code == 204
    assert sim.counters()["jobs_total"] == 0


def test_config_over_http_and_python(make_sim):
    sim = make_sim(**FAST)
    r = requests.patch(sim.url + "/_sim/config", json={"p_error": 1, "max_running_per_user": 3})
    assert r.status_code == 200 and r.json()["p_error"] == 1.0
    assert sim.config.p_error == 1.0 and sim.config.max_running_per_user == 3
    bad = requests.patch(sim.url + "/_sim/config", json={"p_eror": 1})
    assert bad.status_code == 400 and "p_eror" in bad.json()["message"]
    with pytest.raises(ValueError):
        sim.configure(nonsense=1)
    assert requests.get(sim.url + "/_sim/config").json()["max_running_per_user"] == 3


def test_cli_flags_cover_every_knob():
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    cfg = config_from_args(parser.parse_args(
        ["--run-time", "3", "--max-running-per-user", "4", "--retry-after", "none", "--p-error", "0.25",
         "--asset-host", "http://other:1"]))
    assert (cfg.run_time, cfg.max_running_per_user, cfg.retry_after, cfg.p_error) == (3.0, 4, None, 0.25)
    assert cfg.asset_host == "http://other:1" and cfg.queue_time == SimulatorConfig().queue_time


def test_python_m_simulator_serves(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-m", "simulator", "--port", "0", "--run-time", "1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split()[4]
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/.well-known/openeo").json()["versions"][0]["api_version"] == "1.2.0"
        assert requests.get(url + "/_sim/config").json()["run_time"] == 1.0
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# ---------------------------------------------------------------------------- plumbing


def test_requests_overlap_and_keep_alive(make_sim):
    sim = make_sim(**FAST)
    headers = token_headers(sim)
    sim.gates.close("POST /jobs")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(create_job_raw, sim, headers, f"p{i}") for i in range(4)]
        # all four inside the server at once: serial handling would never hold more than one
        held = sim.gates.wait_held(["POST /jobs"], timeout=30, count=4)
        sim.gates.open()
        ids = [f.result(timeout=30) for f in futures]
    assert held == "POST /jobs"
    assert len(set(ids)) == 4

    with requests.Session() as s:
        for _ in range(5):
            assert s.get(sim.api_url + "me", headers=headers).status_code == 200
        s.post(sim.api_url + "jobs", json={"process": {"process_graph": process_graph()}}, headers=headers)
        assert len(sim.connections()) == 1  # one persistent connection served all requests
        # Small keep-alive responses must not hit the Nagle/delayed-ACK ~40 ms stall.
        (conn,) = sim.connections()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_capabilities_and_metadata(make_sim):
    sim = make_sim()
    caps = requests.get(sim.api_url).json()
    assert caps["api_version"] == "1.2.0"
    assert {"id", "title", "description", "backend_version", "stac_version"} <= set(caps)
    paths = {e["path"]: e["methods"] for e in caps["endpoints"]}
    assert set(paths["/jobs/{job_id}/results"]) == {"GET", "POST", "DELETE"}
    assert "GTiff" in requests.get(sim.api_url + "file_formats").json()["output"]
    procs = {p["id"] for p in requests.get(sim.api_url + "processes").json()["processes"]}
    assert {"load_collection", "save_result"} <= procs
    missing = requests.get(sim.api_url + "collections/NOPE")
    assert missing.status_code == 404 and missing.json()["code"] == "CollectionNotFound"
    assert requests.get(sim.api_url + "nope").status_code == 404
    # an unknown path is a 404 (as on openEO backends), not a redirect to the path without its slash
    assert requests.get(sim.api_url + "jobs/", allow_redirects=False).status_code == 404
    not_allowed = requests.delete(sim.api_url + "me")
    assert not_allowed.status_code == 405 and not_allowed.json()["code"] == "MethodNotAllowed"


def test_stop_is_prompt_with_open_keep_alive_connections():
    sim = start_simulator()
    client = socket.create_connection(("127.0.0.1", sim.port), timeout=60)
    client.sendall(b"GET /openeo/1.2/ HTTP/1.1\r\nHost: sim\r\nConnection: keep-alive\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    sim.stop()  # with the idle keep-alive connection still open
    assert not any(t.is_alive() for t in sim._threads)
    rest = answer.split(b"\r\n\r\n", 1)[1]
    length = int(answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(rest) < length:
        rest += client.recv(65536)
    assert client.recv(1) == b""  # the server shut the idle connection: its handler is not left waiting
    client.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(sim.api_url, timeout=1)


def test_help_lists_the_control_endpoints():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "simulator", "--help"], cwd=root, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    for endpoint in ("GET   /_sim/config", "PATCH /_sim/config", "GET   /_sim/counters", "POST  /_sim/reset",
                     "POST  /_sim/outage"):
        assert endpoint in done.stdout, endpoint
