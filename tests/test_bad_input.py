"""Bad input fails clearly BEFORE any job is created, and leaves the job DB byte-identical."""
from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Optional

import pytest

from flows.run_jobs import run_jobs
from tests.flow_helpers import PASSWORD_ENV, UDP_DEFINITION, backend, make_db, serve_json, started_simulators

pytestmark = pytest.mark.usefixtures("prefect_harness")


def one_arg_callback(x):  # a start_job with a signature openeo's manager cannot call
    return None


NOT_CALLABLE = 42


@pytest.fixture(scope="module")
def sim():
    (s,) = started_simulators(1)
    yield s
    s.stop()


def sha256(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jobs_created(sim) -> int:
    return sum(n for key, n in sim.counters()["requests"].items() if key.startswith("POST /jobs"))


def expect_setup_failure(sim, db: Path, words, **kwargs) -> str:
    """Run the flow, expect it to raise before creating jobs; check message words and the DB bytes."""
    before = sha256(db)
    posts_before = jobs_created(sim)
    if "backends" not in kwargs:  # (backend() also sets the password env var: not eagerly)
        kwargs["backends"] = [backend("a", sim, 2)]
    kwargs.setdefault("start_job", "flows.tiling.demo_callbacks:start_job")
    with pytest.raises(Exception) as info:
        run_jobs(job_db=str(db), poll_interval_seconds=0.2, **kwargs)
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    assert sha256(db) == before, "job DB changed"
    assert jobs_created(sim) == posts_before, "a job was created or started"
    assert not list(db.parent.glob("job_*")), "results were written"
    return message


def test_missing_db(sim, tmp_path):
    db = tmp_path / "nope.parquet"
    expect_setup_failure(sim, db, ["nope.parquet"])
    assert not db.exists()


def test_corrupt_db(sim, tmp_path):
    db = tmp_path / "jobs.parquet"
    db.write_bytes(b"this is not parquet at all\x00\x01")
    expect_setup_failure(sim, db, ["jobs.parquet"])


def test_corrupt_csv_db(sim, tmp_path):
    db = tmp_path / "jobs.csv"
    db.write_text("tile_id,status\nT1,not_started\nT2,bogus_status\n")
    expect_setup_failure(sim, db, ["status"])


def test_unknown_backend_in_row(sim, tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 3, backend_name=[None, "mars", None])
    expect_setup_failure(sim, db, ["mars", "row 1", "configured"])


def test_unreachable_backend(sim, tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 3)
    url = f"http://127.0.0.1:{free_port()}"
    message = expect_setup_failure(sim, db, ["not reachable", url, "'b'"],
                                   backends=[backend("a", sim, 2), {**backend("b", sim, 2), "url": url}])
    assert "Connection refused" in message or "connect" in message.lower()


def test_wrong_credentials(sim, tmp_path, monkeypatch):
    db = make_db(tmp_path / "jobs.parquet", 3)
    config = backend("a", sim, 2)
    monkeypatch.setenv(PASSWORD_ENV, "definitely-wrong")
    expect_setup_failure(sim, db, ["authentication", "basic", "'a'"], backends=[config])


def test_password_env_not_set(sim, tmp_path, monkeypatch):
    db = make_db(tmp_path / "jobs.parquet", 3)
    config = backend("a", sim, 2)
    config["auth"]["password_env"] = "NO_SUCH_ENV_VAR_FOR_TEST"
    monkeypatch.delenv("NO_SUCH_ENV_VAR_FOR_TEST", raising=False)
    expect_setup_failure(sim, db, ["NO_SUCH_ENV_VAR_FOR_TEST", "not set"], backends=[config])


@pytest.mark.parametrize("spec, words", [
    ("no_such_package.jobs:start_job", ["no_such_package", "cannot be imported"]),
    ("flows.tiling.demo_callbacks:no_such_function", ["no attribute", "no_such_function"]),
    ("tests.test_bad_input:NOT_CALLABLE", ["not callable (it is an int)"]),
    ("tests.test_bad_input:one_arg_callback", ["one_arg_callback", "start_job(row, connection", "**kwargs"]),
    ("just_a_module_name", ["package.module:function"]),
])
def test_bad_start_job(sim, tmp_path, spec, words):
    db = make_db(tmp_path / "jobs.parquet", 3)
    expect_setup_failure(sim, db, words, start_job=spec)


def test_start_job_and_process_both_or_neither(sim, tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 3)
    expect_setup_failure(sim, db, ["exactly one"], start_job=None)


def test_process_parameter_nobody_provides(sim, tmp_path):
    with serve_json(UDP_DEFINITION) as url:
        db = make_db(tmp_path / "jobs.parquet", 3)
        expect_setup_failure(sim, db, ["max_cloud", "parameter_defaults", "column"],
                             start_job=None, process={"process_id": "ndvi_composite", "namespace": url})


def test_process_definition_unreachable(sim, tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 3)
    url = f"http://127.0.0.1:{free_port()}/udp/x.json"
    expect_setup_failure(sim, db, ["could not be loaded", "'x'"], start_job=None,
                         process={"process_id": "x", "namespace": url})


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_start_workers=0), ["max_start_workers"]),
    (dict(max_start_workers=-3), ["max_start_workers"]),
    (dict(poll_interval_seconds="abc"), ["poll_interval_seconds"]),
    (dict(poll_interval_seconds=-1), ["poll_interval_seconds"]),
    (dict(backends="nope"), ["backends"]),
    (dict(backends=[]), ["backends"]),
    (dict(backends=[{"name": "a", "url": "http://127.0.0.1:1", "parallel_jobs": 0}]), ["parallel_jobs"]),
    (dict(backends=[{"name": "a", "url": "http://127.0.0.1:1", "parallel_jobs": -2}]), ["parallel_jobs"]),
    (dict(backends=[{"name": "a", "url": "ftp://127.0.0.1:1"}]), ["url", "http://"]),
    (dict(backends=[{"name": "a", "url": "http://127.0.0.1:1", "auth": {"type": "basic", "username": "u"}}]),
     ["password_env"]),
    (dict(cancel_running_job_after="soon"), ["cancel_running_job_after"]),
])
def test_wrong_parameters(sim, tmp_path, kwargs, words):
    db = make_db(tmp_path / "jobs.parquet", 3)
    expect_setup_failure(sim, db, words, **kwargs)


def test_duplicate_backend_names(sim, tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 3)
    expect_setup_failure(sim, db, ["unique", "'a'"], backends=[backend("a", sim, 2), backend("a", sim, 2)])
