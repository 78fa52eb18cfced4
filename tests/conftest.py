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

# The longest tests of the default run, longest first (measured one by one after the session's
# set-up, loaded 2 cores; a worker's first test also waits for that set-up). They go
# first, so that none starts last and holds the run's end alone: pytest-xdist's `--dist load
# --maxschedchunk 1` (the README's command) gives each worker the test it runs and the one it runs
# next, then one more at each end, in this order. Each long test is followed by a short one, so the
# test a worker keeps waiting behind a long one is a short one, and the next long test goes to the
# worker that is free first. Stale or missing names only cost that ordering, never a result.
LONGEST_FIRST = (
    "tests/test_stac_collection.py::test_sigkill_while_writing_the_collection_then_resume",
    "tests/test_interruptions.py::test_the_cli_run_survives_its_prefect_server_being_killed",
    "tests/test_deployment.py::test_deploy_worker_run",
    "tests/test_stop_with_tasks_in_flight.py::test_sigint_to_a_script_with_start_tasks_in_flight_exits_without_waiting_for_prefect_retries",
    "tests/test_tag_limits.py::test_the_cli_servers_leases_survive_a_kill_and_a_restart",
    "tests/test_crash_recovery.py::test_killed_in_every_phase_then_resumed",
    "tests/test_sql_campaign_runs.py::test_three_runs_one_campaign_one_killed",
    "tests/test_sql_campaign_runs.py::test_two_campaigns_one_account_share_its_slots_and_start_turns",
    "tests/test_crash_recovery.py::test_killed_while_starting_in_embedded_mode_then_resumed",
    "tests/test_results_storage.py::test_sigkill_during_an_upload_then_resume",
    "tests/test_after_jobs.py::test_hooks_run_after_results_a_failing_hook_marks_its_row_and_resumes_rerun_them",
    "tests/test_stop_with_tasks_in_flight.py::test_an_interrupted_run_leaves_the_task_runs_still_waiting_for_a_tag_slot_without_waiting",
    "tests/test_run_outcomes.py::test_sigint_to_a_script_that_calls_run_jobs_exits_within_seconds",
    "tests/test_faults.py::test_fault_scenario",
    "tests/test_run_outcomes.py::test_outcome_failed_exit_1_a_failing_hook_counts_and_its_rerun_with_a_fixed_hook_runs_it",
    "tests/test_faults.py::test_outage_of_one_of_two_backends",
    "tests/test_tag_limits.py::test_a_tag_limit_of_one_allows_one_start_task_at_once",
    "tests/test_stac_collection.py::test_collection_after_a_run_and_rebuilt_by_the_command",
    "tests/test_run_outcomes.py::test_ctrl_c_in_the_cli_with_a_10_min_poll_exits_130_long_before_the_poll",
    "tests/test_ctrl_c_bad_moment.py::test_ctrl_c_with_a_create_a_start_and_downloads_in_flight",
    "tests/test_run_jobs.py::test_max_parallel_starts_is_the_schedulers_not_a_tag_limit",
    "tests/test_unanswered_create.py::test_a_dead_runs_create_still_held_is_adopted_by_the_resume_not_created_twice",
    "tests/test_limits.py::test_lowering_and_raising_parallel_jobs_while_the_campaign_runs",
    "tests/test_account_sharing.py::test_two_runs_on_one_account_both_progress_at_once",
)


def pytest_collection_modifyitems(config, items):
    """The longest tests first (LONGEST_FIRST), each followed by a short one; the rest in their
    collected order after them (every worker collects the same order, as pytest-xdist requires)."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    long = sorted((item for item in items if item.nodeid.split("[")[0] in rank),
                  key=lambda item: rank[item.nodeid.split("[")[0]])
    short = [item for item in items if item.nodeid.split("[")[0] not in rank]
    ordered = []
    for position, item in enumerate(long):
        ordered.append(item)
        if position < len(short):
            ordered.append(short[position])
    items[:] = ordered + short[len(long):]


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
