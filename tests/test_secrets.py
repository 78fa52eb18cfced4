"""Secrets never leak (DB, result files, logs, Prefect records); bearer tokens stay on their origin;
asset names cannot escape the job directory; short or oversize downloads are caught."""
from __future__ import annotations

import http.server
import json
import logging
import threading

import pandas as pd
import pytest

from flows.run_jobs import run_jobs
from tasks.connection_registry import register_connection, unregister_connection
from tasks.connections import ManagedConnection
from tasks.download import IncompleteDownload, UnsafeAssetName, fetch_job_results, safe_asset_path
from tests.flow_helpers import assert_results_complete, backend, fast_config, make_db, recorded_task_runs
from simulator import start_simulator

PASSWORD = "S3cr3t-pa55-XYZ"
LOGGERS = ("openeo", "urllib3", "prefect", "tasks", "flows", "jobdb", "requests")


def every_page(read_page) -> list:
    """Every record of a Prefect read that answers at most a page (200) per call: `read_page(offset)`."""
    records: list = []
    while True:
        page = read_page(len(records))
        records += page
        if not page:
            return records


def _find(secrets, text: str, where: str):
    for secret in secrets:
        assert secret not in text, f"secret {secret[:4]}... found in {where}"


@pytest.mark.usefixtures("prefect_harness")
def test_no_secret_anywhere_and_bearer_only_to_own_origin(tmp_path, caplog):
    sim = start_simulator(fast_config(password=PASSWORD, token_ttl=1.5, run_time=0.6))
    foreign = start_simulator(fast_config())
    try:
        sim.configure(asset_host=foreign.url)  # assets served by another origin
        db = make_db(tmp_path / "jobs.parquet", 6)
        for name in LOGGERS:
            caplog.set_level(logging.DEBUG, logger=name)
        state = run_jobs(job_db=str(db), backends=[backend("a", sim, 3)],
                         start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3,
                         return_state=True)
        stats, flow_run_id = state.result(), state.state_details.flow_run_id
        assert stats["status"] == {"finished": 6}
        with sim.state.lock:
            tokens = list(sim.state.tokens)
        assert tokens and sim.users["alice"] >= 2, "the short-lived token was never renewed"
        secrets = [PASSWORD, *tokens]

        # the job DB and every file under root_dir (results, metadata)
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert len(files) >= 1 + 2 * 6
        for path in files:
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"secret found in {path}"
        # captured logs at DEBUG (request/response logging of openeo, urllib3, ...)
        assert any(r.levelno == logging.DEBUG for r in caplog.records)
        _find(secrets, "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records), "logs")

        # what Prefect stored of this flow run (the session's server holds other tests' runs too, and
        # answers 200 records at most per call): its parameters, task run inputs and parameters,
        # artifacts, logs. The server records task runs from events, a little after the flow returned.
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                    FlowRunFilterId, LogFilter, LogFilterFlowRunId)

        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        recorded_task_runs(flow_run_id, "", lambda found: len(found) > 0, "a task run of the flow run")
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=this_run)
            task_runs = every_page(lambda offset: client.read_task_runs(flow_run_filter=this_run, offset=offset))
            artifacts = every_page(lambda offset: client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])), offset=offset))
            logs = every_page(lambda offset: client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), offset=offset))
        assert runs and task_runs and artifacts and logs
        stored = [json.dumps(r.model_dump(mode="json"), default=str) for r in [*runs, *task_runs, *artifacts, *logs]]
        assert any('"password_env"' in s for s in stored)  # the parameters are there, by env var name
        _find(secrets, "\n".join(stored), "Prefect records")

        # assets came from the foreign origin without our token, and are complete
        df = pd.read_parquet(db)
        assert_results_complete(tmp_path, df, asset_size=2048)
        asset_requests = foreign.asset_requests
        assert len(asset_requests) >= 6
        assert not any(had_auth for _, had_auth in asset_requests)
        assert sim.asset_requests == []
    finally:
        sim.stop()
        foreign.stop()


# --- download safety, against a tiny results server -------------------------------------------
class _ResultsHandler(http.server.BaseHTTPRequestHandler):
    assets: dict = {}
    payload: bytes = b""
    auth_seen: list = []

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path.startswith("/asset"):
            self.auth_seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.payload)))
            self.end_headers()
            self.wfile.write(self.payload)
        elif self.path.endswith("/results"):
            self._json({"assets": {name: {"href": base + href, **extra} for name, (href, extra) in self.assets.items()}})
        elif self.path.startswith("/jobs/"):
            self._json({"id": "j1", "status": "finished"})
        else:
            self._json({"api_version": "1.2.0", "endpoints": [], "links": []})

    def log_message(self, *args):
        pass


@pytest.fixture
def results_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ResultsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    connection = ManagedConnection(url)
    register_connection("custom", connection)
    _ResultsHandler.auth_seen = []
    yield connection
    unregister_connection("custom")
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("name", ["../evil.tif", "a/../../evil.tif", "/etc/evil.tif", "C:/evil.tif", "..\\evil.tif", ""])
def test_unsafe_asset_names_rejected(tmp_path, name):
    with pytest.raises(UnsafeAssetName):
        safe_asset_path(tmp_path / "job_x", name)


def test_safe_asset_names_accepted(tmp_path):
    d = tmp_path / "job_x"
    assert safe_asset_path(d, "openEO.tif") == (d / "openEO.tif").resolve()
    assert safe_asset_path(d, "sub/dir/b.nc") == (d / "sub" / "dir" / "b.nc").resolve()


@pytest.mark.parametrize("name", ["../evil.tif", "<absolute>"])
def test_download_refuses_escaping_asset(tmp_path, results_server, name):
    if name == "<absolute>":
        name = str(tmp_path / "evil.tif")
    _ResultsHandler.assets = {name: ("/asset/1", {"file:size": 4})}
    _ResultsHandler.payload = b"evil"
    with pytest.raises(UnsafeAssetName, match="outside"):
        fetch_job_results(results_server, "j1", str(tmp_path / "out"))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # neither evil.tif nor anything else
    assert _ResultsHandler.auth_seen == []  # refused before any byte was fetched


@pytest.mark.parametrize("announced, served", [(100, 60), (100, 140)])
def test_short_or_oversize_download_detected(tmp_path, results_server, announced, served):
    _ResultsHandler.assets = {"data.tif": ("/asset/1", {"file:size": announced})}
    _ResultsHandler.payload = b"x" * served
    with pytest.raises(IncompleteDownload, match=f"got {served} bytes"):
        fetch_job_results(results_server, "j1", str(tmp_path))
    job_dir = tmp_path / "job_j1"
    assert not (job_dir / "data.tif").exists()
    assert list(job_dir.glob(".*.part")) == []
    assert not (job_dir / "job_j1.json").exists()  # metadata only once every asset is complete


def test_complete_download_and_resume_skips_done_assets(tmp_path, results_server):
    _ResultsHandler.assets = {"data.tif": ("/asset/1", {"file:size": 50})}
    _ResultsHandler.payload = b"y" * 50
    result = fetch_job_results(results_server, "j1", str(tmp_path))
    assert result["bytes"] == 50 and (tmp_path / "job_j1" / "data.tif").read_bytes() == b"y" * 50
    fetch_job_results(results_server, "j1", str(tmp_path))
    assert len(_ResultsHandler.auth_seen) == 1  # the complete asset was not fetched again


# --- OIDC: tokens renewed mid-run, never stored anywhere -------------------------------------
OIDC_TTL = 30.0  # the run below lasts longer: every backend's token expires at least once


@pytest.mark.slow  # 86 s (tokens must expire mid-run); in the default run: test_faults.py::test_expired_tokens_are_renewed and test_no_secret_anywhere_and_bearer_only_to_own_origin
@pytest.mark.usefixtures("prefect_harness")
def test_oidc_tokens_renewed_mid_run_and_never_leak(tmp_path, tmp_path_factory, caplog, monkeypatch):
    import io
    import sys
    import time as clock

    from openeo.rest.auth.config import RefreshTokenStore
    from prefect.blocks.system import Secret

    from simulator import SimulatorConfig
    from tests.oidc_provider import DEVICE_GRANT, started_provider

    provider_gen = started_provider(access_token_ttl=OIDC_TTL)
    provider = next(provider_gen)
    sims = []
    try:
        provider.add_client("robot", "robot-s3cret-XYZ", ("client_credentials",))
        provider.add_client("envbot", "envbot-s3cret-XYZ", ("client_credentials",))
        provider.add_client("openeo-public", None, ("refresh_token", DEVICE_GRANT))
        sims = [start_simulator(SimulatorConfig(queue_time=0.1, run_time=16.0, asset_size=2048, seed=3,
                                                oidc_issuer=provider.issuer, oidc_default_client_id="openeo-public",
                                                basic_auth=False)) for _ in range(3)]
        # a deployment: no terminal; openeo's token store holds carol's refresh token (she logged in once)
        monkeypatch.setattr(sys, "stdin", io.StringIO())
        monkeypatch.setenv("OPENEO_CONFIG_HOME", str(tmp_path_factory.mktemp("openeo-config")))
        refresh_token = provider.issue_refresh_token("openeo-public", "carol")
        RefreshTokenStore().set_refresh_token(provider.issuer, "openeo-public", refresh_token)
        monkeypatch.setenv("OPENEO_AUTH_METHOD", "client_credentials")
        monkeypatch.setenv("OPENEO_AUTH_CLIENT_ID", "envbot")
        monkeypatch.setenv("OPENEO_AUTH_CLIENT_SECRET", "envbot-s3cret-XYZ")
        Secret(value="robot-s3cret-XYZ").save("test-secrets-robot", overwrite=True)
        backends = [
            {"name": "cc", "url": sims[0].url, "parallel_jobs": 1, "auth": {
                "type": "oidc_client_credentials", "client_id": "robot", "client_secret_block": "test-secrets-robot"}},
            {"name": "env", "url": sims[1].url, "parallel_jobs": 1, "auth": {"type": "env"}},
            {"name": "store", "url": sims[2].url, "parallel_jobs": 1, "auth": {"type": "oidc"}},
        ]
        db = make_db(tmp_path / "jobs.parquet", 6, backend_name=["cc", "env", "store"] * 2)
        for name in LOGGERS:
            caplog.set_level(logging.DEBUG, logger=name)
        t0 = clock.monotonic()
        stats = run_jobs(job_db=str(db), backends=backends, start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=1.0)
        assert clock.monotonic() - t0 > OIDC_TTL + 2
        assert stats["status"] == {"finished": 6}
        users = {"cc": "robot", "env": "envbot", "store": "carol"}
        for sim, name in zip(sims, users):
            seen = sim.counters()["oidc_tokens_per_user"]
            assert seen.get(users[name], 0) >= 2, f"{name}: the expired token was never renewed ({seen})"
        issued = provider.access_tokens_issued()
        assert issued["client_credentials"] >= 4 and issued["refresh_token"] >= 2, issued
        secrets = [*provider.all_tokens(), "robot-s3cret-XYZ", "envbot-s3cret-XYZ"]
        assert refresh_token in secrets and len(secrets) >= 8

        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert len(files) >= 1 + 2 * 6
        for path in files:
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"secret found in {path}"
        _find(secrets, "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records), "logs")
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            stored = [json.dumps(r.model_dump(mode="json"), default=str) for r in
                      [*client.read_flow_runs(), *client.read_task_runs(), *client.read_artifacts(), *client.read_logs()]]
        assert any('"client_secret_block"' in s for s in stored)
        _find(secrets, "\n".join(stored), "Prefect records")
    finally:
        for sim in sims:
            sim.stop()
        next(provider_gen, None)
