"""Exactly-once job creation when `POST /jobs` gets no answer.

A POST that went out and got no answer (read timeout, connection cut after sending) has an unknown
outcome: the backend may still create the job after the client gave up and after it looked for it.
The run must not create another: the row stays `creating`, its job is looked up by marker, and it is
created again only after a grace period (a few request timeouts).

The flow test holds the first `POST /jobs` in the simulator (simulator/gates.py) past the client's
timeout, lets the run's lookup by marker answer "no job", and only then lets the backend create the
job: the order is made by the gates, not by sleeps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Tuple

import pandas as pd
import pytest
import requests
import urllib3
from openeo.rest import OpenEoApiError

from flows.run_jobs import run_jobs
from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.claims import LEASE_ENV
from simulator import start_simulator
from tasks.faults import AnswerLost, BackendUnavailable, answer_lost, classify
from tasks.retry_policy import REQUEST_TIMEOUT_ENV
from tests.flow_helpers import backend, fast_config, make_db

CREATE = "POST /jobs"
LISTING = "GET /jobs"
WAIT = 120.0  # guards against a hang only; every wait below ends on an event
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = "2"  # the run's request timeout (s): the held POST times out at once, the grace is 3 x 2 s


def _api_error(status: int) -> OpenEoApiError:
    return OpenEoApiError(http_status_code=status, code="X", message="x")


def test_sent_without_answer_is_told_apart_from_never_sent():
    # sent, no answer: unknown outcome (the backend may still create the job)
    read_timeout = requests.ReadTimeout(urllib3.exceptions.ReadTimeoutError(None, "/jobs", "read timed out"))
    reset = requests.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")))
    for exc in (read_timeout, reset, _api_error(504)):
        assert answer_lost(exc), exc
        assert isinstance(classify(exc), AnswerLost), exc
    # never sent, or answered by the backend itself: safe to send again
    refused = requests.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "/jobs", urllib3.exceptions.NewConnectionError(None, "Connection refused")))
    connect_timeout = requests.ConnectTimeout(urllib3.exceptions.ConnectTimeoutError(None, "timed out"))
    for exc in (refused, connect_timeout, _api_error(503), _api_error(500), _api_error(429), ValueError("x")):
        assert not answer_lost(exc), exc
        assert not isinstance(classify(exc), AnswerLost), exc
    assert isinstance(classify(refused), BackendUnavailable) and isinstance(classify(_api_error(503)), BackendUnavailable)


class LateCreate:
    """Drives the gates from a thread: once a `POST /jobs` is held and the run's lookup by marker
    has answered "no job", the backend creates the job, for a client long gone."""

    def __init__(self, sim):
        self.sim, self.gates = sim, sim.gates
        self.jobs_before_release = None
        self.jobs_after_release: list = []
        self.problems: list = []
        self.thread = threading.Thread(target=self._drive, daemon=True)

    def _drive(self) -> None:
        try:
            if self.gates.wait_held([CREATE], WAIT) is None:
                self.problems.append("no POST /jobs was held")
                return
            self.gates.close(LISTING)
            # the client gave up on the POST (or died): the run looks for the job by its marker ...
            if self.gates.wait_held([LISTING], WAIT) is None:
                self.problems.append("the run never looked the job up")
                return
            self.gates.open(LISTING)
            self.gates.wait_drained(WAIT, [LISTING])  # ... and finds none: the POST is still held
            self.jobs_before_release = self.sim.counters()["jobs_total"]
            self.gates.open(CREATE)
            self.gates.wait_drained(WAIT, [CREATE])
            self.jobs_after_release = self.sim.jobs()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.problems.append(repr(exc))
        finally:
            self.gates.open()

    def check(self, rows: Callable[[], pd.DataFrame], stats) -> None:
        """Every row finished, exactly one job per row, and row 0's job is the late one."""
        self.thread.join(WAIT)
        counters = self.sim.counters()
        assert self.problems == []
        df = rows()
        assert stats["status"] == {"finished": 2}, stats["status"]
        assert (df["status"] == "finished").all()
        late = [j["id"] for j in self.jobs_after_release]
        assert self.jobs_before_release == 0 and late == [df.loc[0, "id"]], (late, df["id"].tolist())
        assert counters["jobs_total"] == 2 == df["id"].nunique(), counters["jobs_total"]
        assert counters["duplicate_titles"] == {}
        assert sum(n for route, n in counters["requests"].items() if route.startswith("POST /jobs ")) == 2, \
            counters["requests"]


def _run_kwargs(db, sim, **more) -> dict:
    return dict(job_db=str(db), backends=[{**backend("a", sim, parallel_jobs=1), "create_ahead": 0}],  # row 1 waits
                start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3, **more)


def _job_db(tmp_path, store: str) -> Tuple[dict, Callable[[], pd.DataFrame]]:
    """Two rows in a file job DB, or in a SQLite campaign: (run_jobs arguments for it, its rows now)."""
    if store == "file":
        db = make_db(tmp_path / "jobs.parquet", 2)
        return {"job_db": str(db)}, lambda: pd.read_parquet(db)
    url = f"sqlite:///{tmp_path / 'campaigns.db'}"
    SqlDatabase.open(url, create=True).create_campaign("c", pd.DataFrame({"tile_id": ["T000", "T001"],
                                                                          "year": [2020, 2021]}))
    return {"job_db": url, "campaign": "c", "root_dir": str(tmp_path / "results")}, \
        lambda: SqlDatabase.open(url).export("c")


def test_a_create_held_past_the_client_timeout_is_adopted_not_created_twice(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.setenv(REQUEST_TIMEOUT_ENV, TIMEOUT)
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 2)
        sim.gates.close(CREATE)
        late = LateCreate(sim)
        late.thread.start()
        stats = run_jobs(**_run_kwargs(db, sim))
        late.check(lambda: pd.read_parquet(db), stats)
    finally:
        sim.gates.open()
        sim.stop()


@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_a_dead_runs_create_still_held_is_adopted_by_the_resume_not_created_twice(prefect_harness, tmp_path,
                                                                                   monkeypatch, store):
    """The run is SIGKILLed while its POST /jobs is held; the resume (the file job DB's next run, or
    a run that adopts the SQL campaign's rows once the dead run's lease ended) finds the row
    `creating`, looks for its job before the backend made it, and must wait for it."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv(REQUEST_TIMEOUT_ENV, TIMEOUT)
    monkeypatch.setenv(LEASE_ENV, "2")  # the dead run's SQL rows are adopted 2 s after its last heartbeat
    sim = start_simulator(fast_config())
    try:
        where, rows = _job_db(tmp_path, store)
        kwargs = _run_kwargs(where.pop("job_db"), sim, **where)
        sim.gates.close(CREATE)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value()}
        child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                                 env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                 stderr=open(tmp_path / "child.log", "wb"))
        try:
            while sim.gates.wait_held([CREATE], timeout=0.5) is None:
                assert child.poll() is None, "the run ended before it sent a create"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(60)
        assert rows()["status"].tolist() == ["creating", "not_started"]
        late = LateCreate(sim)  # the dead run's POST is still held
        late.thread.start()
        stats = run_jobs(**kwargs)
        late.check(rows, stats)
    finally:
        sim.gates.open()
        sim.stop()


def test_a_creating_row_whose_job_never_comes_is_given_back_once_its_grace_ends(prefect_harness, tmp_path,
                                                                                 monkeypatch):
    """A row left `creating` by a run that died before its POST went out (or whose create task
    Prefect crashed before its body): its lookup by marker finds nothing, now and later. It is
    looked up when first seen and once more when the grace (3 request timeouts, counted from the
    first sight) has passed, then given back and created once; the run ends.

    The first lookup is held at the backend until the run has gone through another cycle (row 1's
    job was started and its poll is held too): rows being looked up used to count as busy there,
    which restarted their grace and forgot the lookup, so such a row was looked up again and again
    (a 10k-row run spun on 21 of them, ~9 listings a second, and never ended)."""
    from jobdb.paths import JobDbPaths

    monkeypatch.setenv(REQUEST_TIMEOUT_ENV, "2")  # grace 6 s
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 2)
        df = pd.read_parquet(db)
        df["status"] = df["status"].astype(object)
        df.loc[0, ["status", "backend_name", "job_marker"]] = ["creating", "a", JobDbPaths.of(db).row_marker(0)]
        df.to_parquet(db)
        sim.gates.close(LISTING)
        outcome: dict = {}
        kwargs = {**_run_kwargs(db, sim), "backends": [{**backend("a", sim, parallel_jobs=2), "create_ahead": 0}]}
        run = threading.Thread(target=lambda: outcome.update(stats=run_jobs(**kwargs)), daemon=True)
        run.start()
        # the lookup of row 0, then the poll of row 1's job: cycles went by while the lookup was out
        seen_cycles = sim.gates.wait_held([LISTING], WAIT, count=2)
        sim.gates.open()
        run.join(WAIT)
        assert seen_cycles == LISTING and not run.is_alive()
        stats = outcome["stats"]
        assert stats["status"] == {"finished": 2}, stats["status"]
        assert stats["reconcile_tasks"] == 2, stats["reconcile_tasks"]  # at first sight, and after the grace
        counters = sim.counters()
        assert counters["jobs_total"] == 2 == pd.read_parquet(db)["id"].nunique()
        assert counters["duplicate_titles"] == {}
    finally:
        sim.gates.open()
        sim.stop()
