"""A Ctrl-C to a script's process group while many start task runs are in flight: Prefect's
temporary server stops with it, and the task runs still waiting for their tag's concurrency slot
must not retry their Prefect calls for a minute each, one after the other (Prefect's concurrency
service takes them one at a time), before the script may exit: a 2500-row run printed `stopping`
for minutes (bench/stops.py --scale). Real simulator, real Prefect (the script's temporary server,
with an operator's tag limit on the backend), a real SIGINT to the process group."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from jobdb import JobDbPaths
from simulator import start_simulator
from tasks.retry_policy import REQUEST_TIMEOUT_ENV
from tests.flow_helpers import backend, fast_config, make_db
from tests.test_interruptions import processes_with_env, wait_for
from tests.test_run_outcomes import CALLBACK, own_prefect_home_env

ROWS = 24
TAG_LIMIT = 2  # start task runs at once on the backend (an operator's tag limit): the others wait for a slot
TAG = "openeo-backend:a"
# Once the held starts answered, the exit must not wait for Prefect's retries of a gone API: 5 retries
# 2..30 s apart, about a minute per call, one task run after the other. A bound below that minute, with
# room for a machine loaded by parallel test sessions (a stop takes <= 3 s: bench/stops.py).
EXIT_SECONDS = 40.0
# A user's script; it first sets an operator's tag limit on its own temporary server.
SCRIPT = """import json, sys
from prefect.client.orchestration import get_client
from flows.run_jobs import RunInterrupted, run_jobs

with get_client(sync_client=True) as client:
    client.create_concurrency_limit(tag=sys.argv[2], concurrency_limit=int(sys.argv[3]))
try:
    run_jobs(**json.loads(sys.argv[1]))
except RunInterrupted:
    sys.exit(130)
"""


def temporary_server_pids(home: Path):
    """Prefect's temporary server of a script using `home` (uvicorn, its own interpreter)."""
    found = []
    for pid in processes_with_env("PREFECT_HOME", str(home)):
        try:
            if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.usefixtures("prefect_harness")
def test_sigint_to_a_script_with_start_tasks_in_flight_exits_without_waiting_for_prefect_retries(
        tmp_path, prefect_home, monkeypatch):
    sim = start_simulator(fast_config())
    db = make_db(tmp_path / "jobs.parquet", ROWS)
    kwargs = dict(job_db=str(db), backends=[backend("a", sim, ROWS)], start_job=CALLBACK, max_start_workers=20,
                  poll_interval_seconds=1.0)
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    env = own_prefect_home_env(prefect_home, sim)
    command = [sys.executable, str(script), json.dumps(kwargs)]
    sim.gates.close("POST /jobs")
    child = subprocess.Popen(command + [TAG, str(TAG_LIMIT)], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    err: list = []
    reader = threading.Thread(target=lambda: err.extend(child.stderr), daemon=True)
    reader.start()
    try:
        # TAG_LIMIT start task runs hold the slots, in their callback's POST /jobs; the others, submitted
        # in the same cycle (ROWS free job slots, 20 start workers), wait for a slot
        assert sim.gates.wait_held(["POST /jobs"], timeout=300, count=TAG_LIMIT), \
            f"no {TAG_LIMIT} starts in flight (exit {child.poll()}): {''.join(err)[-3000:]}"
        server = temporary_server_pids(prefect_home)
        assert server, "no temporary Prefect server found"
        os.killpg(child.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the script and its temporary server
        t0 = time.monotonic()
        # the server is gone before the held starts answer: each in-flight task run's next Prefect call fails
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and
                                 "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2] for pid in server),
                 60, "the temporary server to stop")
        sim.gates.open()  # the held starts answer: from here on only the script's own wind-down is left
        opened = time.monotonic()
        try:
            child.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {EXIT_SECONDS:.0f} s after the held starts answered: the task "
                                 f"runs waiting for a slot retry their Prefect calls to the gone API") from None
        reader.join(10)
        print(f"\nSIGINT with start task runs waiting for a tag slot: exit {child.returncode} "
              f"{time.monotonic() - t0:.1f} s after the signal, {time.monotonic() - opened:.1f} s after the "
              f"held starts answered")
        assert child.returncode == 130, "".join(err)[-3000:]
        assert "stopping: interrupted by SIGINT" in "".join(err)
        assert "the Prefect API is gone" in "".join(err)
        note = json.loads(JobDbPaths.of(db).lock_holder.read_text())
        assert note["unrecorded_end"] == "Cancelled"  # the next run records the end
        assert temporary_server_pids(prefect_home) == []

        # a resume completes every row, each job created once (here in the test's process, against
        # the session's Prefect server: a second temporary server would cost its start-up again)
        from flows.run_jobs import run_jobs

        # the rows that never reached their POST are created again after the grace for an unanswered
        # create, 3 request timeouts: 3 x 5 s here
        monkeypatch.setenv(REQUEST_TIMEOUT_ENV, "5")
        stats = run_jobs(**kwargs)
        assert stats["status"].get("finished") == ROWS, stats["status"]
        df = pd.read_parquet(db)
        assert (df["status"] == "finished").all(), df["status"].value_counts()
        assert not sim.counters()["duplicate_titles"], sim.counters()["duplicate_titles"]
        assert df["id"].nunique() == ROWS
        assert processes_with_env("PREFECT_HOME", str(prefect_home)) == []
    finally:
        sim.gates.open()
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        sim.stop()


# A user's script against a running Prefect server (PREFECT_API_URL: the session's): a SIGINT to
# the script alone leaves that server up, so the slot requests are answered, each with "none free".
PLAIN_SCRIPT = """import json, sys
from flows.run_jobs import RunInterrupted, run_jobs

try:
    run_jobs(**json.loads(sys.argv[1]))
except RunInterrupted:
    sys.exit(130)
"""
# Far longer than any stop: while the test holds the slot, no task run of the script gets one.
HELD_LEASE_SECONDS = 900
# A bound for a hang (a stop takes <= 3 s: bench/stops.py), with room for a loaded machine; before,
# the script waited until the test's lease ran out.
WAITING_EXIT_SECONDS = 90.0


@pytest.mark.usefixtures("prefect_harness")
def test_an_interrupted_run_leaves_the_task_runs_still_waiting_for_a_tag_slot_without_waiting(tmp_path, monkeypatch):
    """Every start task run of the run waits for its tag's concurrency slot, which someone else
    holds (here the test, with a long lease): at the SIGINT those task runs have not begun their
    body (no POST), so the script exits at once instead of waiting for a slot they would only give
    back (before: until the other holder's lease ran out). Their rows stay `creating` with their
    markers; with the slot free again the same run resumes and creates each job once."""
    import uuid

    from prefect.client.orchestration import get_client

    from tests.test_run_outcomes import harness_env

    name = f"held{uuid.uuid4().hex[:6]}"
    tag = f"openeo-backend:{name}"
    rows = 6
    sim = start_simulator(fast_config())
    db = make_db(tmp_path / "jobs.parquet", rows)
    kwargs = dict(job_db=str(db), backends=[backend(name, sim, rows)], start_job=CALLBACK, max_start_workers=3,
                  poll_interval_seconds=600.0)
    script = tmp_path / "my_script.py"
    script.write_text(PLAIN_SCRIPT)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
        lease = client.increment_concurrency_slots_with_lease(
            names=[f"tag:{tag}"], slots=1, mode="concurrency", lease_duration=HELD_LEASE_SECONDS).json()["lease_id"]

    def creating() -> bool:  # the intents are on disk; the cycle submits their start task runs right after
        try:
            return bool((pd.read_parquet(db)["status"] == "creating").any())
        except (OSError, ValueError):  # between the atomic write's steps
            return False

    child = subprocess.Popen([sys.executable, str(script), json.dumps(kwargs)],
                             env=harness_env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list = []
    reader = threading.Thread(target=lambda: err.extend(child.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: creating() or child.poll() is not None, 300, "the run's first intents")
        assert child.poll() is None, "".join(err)[-3000:]
        child.send_signal(signal.SIGINT)  # the script alone: the server stays up and keeps saying "none free"
        try:
            child.wait(timeout=WAITING_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {WAITING_EXIT_SECONDS:.0f} s after the SIGINT: the stop waits for "
                                 f"task runs that only wait for a tag slot held elsewhere") from None
        reader.join(10)
        out = "".join(err)
        assert child.returncode == 130, out[-3000:]
        assert "stopping: interrupted by SIGINT" in out
        assert "crash" not in out.lower(), out[-3000:]  # abandoned task runs are forgotten, not reported as crashed
        assert sim.counters()["jobs_total"] == 0  # no task run began its body
        df = pd.read_parquet(db)
        assert set(df["status"]) <= {"creating", "not_started"}, df["status"].value_counts()
        assert df.loc[df["status"] == "creating", "job_marker"].notna().all()
        assert not JobDbPaths.of(db).lock_holder.exists()  # the run's end was recorded and the DB released

        with get_client(sync_client=True) as client:  # the slot is free again, and no limit is left
            client.release_concurrency_slots_with_lease(lease)
            client.delete_concurrency_limit_by_tag(tag)
        from flows.run_jobs import run_jobs

        monkeypatch.setenv(REQUEST_TIMEOUT_ENV, "5")  # the grace for an unanswered create: 3 x 5 s
        stats = run_jobs(**{**kwargs, "poll_interval_seconds": 0.5})
        assert stats["status"].get("finished") == rows, stats["status"]
        assert not sim.counters()["duplicate_titles"], sim.counters()["duplicate_titles"]
        assert pd.read_parquet(db)["id"].nunique() == rows
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        with get_client(sync_client=True) as client, contextlib.suppress(Exception):  # (gone already)
            client.delete_concurrency_limit_by_tag(tag)
        sim.stop()
