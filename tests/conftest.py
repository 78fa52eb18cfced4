"""Shared fixtures: one Prefect test harness per session, simulator servers per test."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Set before Prefect is imported anywhere: the ephemeral server's telemetry job
# logs "database is locked" on a fresh database otherwise.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# Job-slot ledgers of this test session and start turns (accounts/), shared with the runs it starts.
os.environ.setdefault("OPENEO_JOBS_STATE_DIR", tempfile.mkdtemp(prefix="openeo-jobs-state-"))
# A row left `creating` by a killed run is created again only after a grace of 3 request timeouts
# (tasks/retry_policy.py: its POST may still be held by the backend). With the default 60 s, every
# kill-and-resume test would wait 3 min for its unsent intents; 20 s (a 60 s grace) is still far
# above what a loopback simulator takes on a loaded machine, and a timeout only costs a retry.
os.environ.setdefault("OPENEO_JOBS_REQUEST_TIMEOUT_SECONDS", "20")

import pytest


@pytest.fixture(scope="session")
def prefect_harness(migrated_prefect_db):
    """A real Prefect server (temporary SQLite database) shared by the whole session.

    Starting one costs ~12 s (minutes on a loaded machine), so every test that needs Prefect shares
    this one. Its database starts as a copy of the session's migrated one (`migrated_prefect_db`),
    so the migrations run once per session, not once more here. Prefect's start-up probe retries
    only refused connections: it gives up on a health answer slower than httpx's default 5 s, or on
    a connection the starting server reset (both seen at load 20 on 2 cores): stop that server and
    start again then.
    """
    from unittest import mock

    import httpx
    import prefect.testing.utilities as harness
    from prefect.server.api.server import SubprocessASGIServer

    for attempt in range(1, 4):
        stack = contextlib.ExitStack()
        folder = tempfile.mkdtemp(prefix="prefect-harness-")  # the harness's own temp folder, seeded
        shutil.copy(migrated_prefect_db, Path(folder) / "prefect-test.db")  # its file name (prefect 3.9)
        try:
            with mock.patch.object(harness, "mkdtemp", lambda: folder):
                stack.enter_context(harness.prefect_test_harness(server_startup_timeout=600))  # a bound for hangs
            break
        except httpx.TransportError:  # a timeout, a reset connection (httpx.ReadError), ...
            stack.close()
            failed = SubprocessASGIServer._instances.pop(None, None)  # the harness left it registered, running
            if failed is not None:
                failed.stop()
            if attempt == 3:
                raise
    with stack:
        yield


@pytest.fixture(scope="session")
def migrated_prefect_db(tmp_path_factory) -> Path:
    """A Prefect database with every migration applied, made once per session.

    A server on a fresh PREFECT_HOME first migrates its database: ~20 s of CPU (minutes on a loaded
    machine), paid again by every test that starts its own server. The migrations are Prefect's,
    not what these tests prove, so each test copies this database instead (`prefect_home`). With
    pytest-xdist the session's workers share one template (made by the first that needs it).
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: one template for all of the session's workers
        root = root.parent  # the session's temp folder, shared by its workers (pytest-xdist's recipe)
    home = root / "prefect-home-template"
    with FileLock(str(root / "prefect-home-template.lock")):
        if not home.is_dir():
            making = Path(tempfile.mkdtemp(prefix="prefect-home-making-", dir=root))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_HOME=str(making), PREFECT_SERVER_ANALYTICS_ENABLED="false")
            prefect = str(Path(sys.executable).with_name("prefect"))
            subprocess.run([prefect, "server", "database", "upgrade", "-y"], env=env, check=True,
                           capture_output=True, timeout=900)  # a bound for hangs (a loaded machine)
            making.rename(home)  # complete or absent: a failed upgrade leaves no template to copy
    return home / "prefect.db"


@pytest.fixture
def prefect_home(tmp_path, migrated_prefect_db) -> Path:
    """A PREFECT_HOME of the test's own (tmp_path/prefect-home) for a server the test or the CLI
    starts there (embedded mode, `prefect server start`), its database already migrated."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    for suffix in ("", "-wal", "-shm"):  # the upgrade process has ended: normally only the .db is left
        source = migrated_prefect_db.with_name(migrated_prefect_db.name + suffix)
        if source.exists():
            shutil.copy(source, home / source.name)
    return home


@pytest.fixture
def sim():
    """A simulated backend whose jobs queue 0.2 s and run 1 s (test modules may define their own)."""
    from simulator import start_simulator
    from tests.flow_helpers import fast_config

    sim = start_simulator(fast_config(queue_time=0.2, run_time=1.0))
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster on loopback for the session (tests/postgres.py)."""
    from tests.postgres import PostgresCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    cluster = PostgresCluster(bin_dir).start()
    yield cluster
    cluster.stop()
