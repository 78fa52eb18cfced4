"""What happens after a job ends: bounded resubmission, post-processing hooks, job events."""
from __future__ import annotations

import hashlib
import time

import pandas as pd
import pytest

from flows.config.params import SetupError
from flows.run_jobs import run_jobs
from jobdb import JobDatabase
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config, make_db

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_failed_jobs_are_resubmitted_until_their_attempts_are_used(tmp_path):
    sim = start_simulator(fast_config(p_error=0.5, seed=11))
    try:
        db = make_db(tmp_path / "jobs.parquet", 10)
        stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 4)], start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=0.3, max_attempts=3, failure_threshold=1.0)
    finally:
        sim.stop()
    df = pd.read_parquet(db)
    print("\nattempts:", df["attempt"].value_counts().to_dict(), "statuses:", stats["status"])
    assert df["status"].isin(["finished", "error"]).all()
    assert (df["attempt"] > 1).any()  # some rows needed another job
    assert (df.loc[df["status"] == "error", "attempt"] == 3).all()  # errors only once attempts are used
    retried = df[df["attempt"] > 1]
    for _, row in retried.iterrows():
        earlier = row["previous_job_ids"].split(",")
        assert len(earlier) == row["attempt"] - 1 and row["id"] not in earlier
    counters = sim.counters()
    assert counters["jobs_total"] == int(df["attempt"].sum())  # exactly one job per attempt
    assert counters["duplicate_titles"] == {}
    import openeo.extra.job_management as ojm

    assert len(ojm.get_job_db(db).read()) == 10  # still a DB openeo's manager reads


def test_hooks_run_after_results_a_failing_hook_marks_its_row_and_resumes_rerun_them(tmp_path):
    sim = start_simulator(fast_config(p_error=0.4, seed=5))
    try:
        db = make_db(tmp_path / "jobs.parquet", 8)
        common = dict(job_db=str(db), backends=[backend("a", sim, 4)], start_job="flows.tiling.demo_callbacks:start_job",
                      poll_interval_seconds=0.3, failure_threshold=1.0)
        run_jobs(**common)  # no hooks yet: the resumed run must run them
        jobs_before = sim.counters()["jobs_total"]
        stats = run_jobs(**common, on_job_done="tests.example_hooks:mark_done",
                         on_job_error="tests.example_hooks:always_fails")
    finally:
        sim.stop()
    df = pd.read_parquet(db)
    finished, failed = df[df["status"] == "finished"], df[df["status"] == "error"]
    assert len(finished) and len(failed)
    assert sim.counters()["jobs_total"] == jobs_before and stats["start_tasks"] == 0
    for _, row in finished.iterrows():
        note = (tmp_path / f"job_{row['id']}" / "postprocessed.txt").read_text().split()
        assert note[:3] == [row["id"], row["tile_id"], "1"]
        assert row["postprocess_status"] == "done"
    assert (failed["postprocess_status"] == "failed").all()
    assert failed["postprocess_error"].str.contains("hook cannot handle").all()
    assert stats["hook_tasks"] == len(df)


def test_every_job_status_change_is_a_prefect_event(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
    from prefect.types import DateTime

    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 3)
        since = DateTime.now("UTC").subtract(seconds=5)
        run_jobs(job_db=str(db), backends=[backend("evt", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                 poll_interval_seconds=0.3)
    finally:
        sim.stop()
    ids = set(pd.read_parquet(db)["id"])
    event_filter = EventFilter(event=EventNameFilter(prefix=["openeo.job."]),
                               occurred=EventOccurredFilter(since=since, until=DateTime.now("UTC").add(minutes=10)))
    deadline = time.monotonic() + 300  # a bound for hangs: a loaded machine writes them late
    finished = []
    while time.monotonic() < deadline:  # the server writes events in batches (~5 s)
        with get_client(sync_client=True) as client:
            events = [e for e in client.read_events(filter=event_filter, limit=50).events
                      if e.resource.id.removeprefix("openeo.job.") in ids]
        finished = [e for e in events if e.event == "openeo.job.finished"]
        if len(finished) == 3:
            break
        time.sleep(1)
    assert len(finished) == 3, [e.event for e in events]
    assert {e.resource["openeo.backend"] for e in finished} == {"evt"}
    assert {e.resource["openeo.tile"] for e in finished} == {"T000-2020", "T001-2021", "T002-2022"}
    assert {e.event for e in events} >= {"openeo.job.queued", "openeo.job.finished"}


@pytest.mark.parametrize("field, value, words", [
    ("on_job_done", "no_such_module:hook", ["on_job_done", "cannot be imported"]),
    ("on_job_error", "tests.example_hooks:two_arguments", ["on_job_error", "hook(job_id, row, job_dir, connection)"]),
])
def test_bad_hooks_are_refused_before_any_job(tmp_path, field, value, words):
    sim = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.csv", 2)
        digest = hashlib.sha256(db.read_bytes()).hexdigest()
        with pytest.raises(SetupError) as refused:
            run_jobs(job_db=str(db), backends=[backend("a", sim, 2)], start_job="flows.tiling.demo_callbacks:start_job",
                     **{field: value})
        assert all(w in str(refused.value) for w in words), str(refused.value)
        assert refused.value.parameter == field
        assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
        assert sim.counters()["jobs_total"] == 0
    finally:
        sim.stop()


def test_max_attempts_below_one_is_refused(tmp_path):
    db = make_db(tmp_path / "jobs.csv", 1)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(Exception, match="max_attempts"):
        run_jobs(job_db=str(db), backends=[{"name": "a", "url": "http://127.0.0.1:9"}],
                 start_job="flows.tiling.demo_callbacks:start_job", max_attempts=0)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert JobDatabase.open(db).df["status"].eq("not_started").all()


def test_a_backend_out_of_credits_stops_taking_jobs_and_the_others_go_on(tmp_path):
    """402 on start: no more starts there for this run, no row start_failed, the other backend
    takes the rest; a run with no backend left ends with the rows waiting, saying why."""
    broke = start_simulator(fast_config(credits=2, job_cost=1, credits_checked_on="start"))
    rich = start_simulator(fast_config())
    try:
        db = make_db(tmp_path / "jobs.parquet", 10)
        stats = run_jobs(job_db=str(db), backends=[backend("broke", broke, 3), backend("rich", rich, 3)],
                         start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3)
        df = pd.read_parquet(db)
        assert (df["status"] == "finished").all() and "start_failed" not in stats["status"]
        assert set(stats["refused_backends"]) == {"broke"} and "402" in stats["refused_backends"]["broke"]
        assert (df["backend_name"] == "broke").sum() == 2  # the two jobs it could pay for
        assert broke.counters()["requests"].get("POST /jobs/{id}/results 402", 0) >= 1

        alone = make_db(tmp_path / "alone.parquet", 3)
        state = run_jobs(job_db=str(alone), backends=[backend("broke", broke, 3)],
                         start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3, return_state=True)
        assert state.is_completed() and "rows left" in state.message and "refused new jobs" in state.message and "broke" in state.message
        left = pd.read_parquet(alone)
        assert set(left["status"]) <= {"not_started", "created"} and "start_failed" not in set(left["status"])
    finally:
        broke.stop()
        rich.stop()
