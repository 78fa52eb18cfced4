"""The SQL campaign store with SQLite (one machine): a whole flow run, claims, bad URLs."""
from __future__ import annotations

import pandas as pd
import pytest

from flows.run_jobs import run_jobs
from jobdb import JobDbError
from jobdb.interface import open_store
from jobdb.sql.campaign import SqlDatabase
from tests.flow_helpers import backend


def sqlite_campaign(tmp_path, rows: int, name: str = "eu") -> str:
    url = f"sqlite:///{tmp_path / 'campaigns.db'}"
    df = pd.DataFrame({"tile_id": [f"T{i:03d}" for i in range(rows)], "year": [2020 + i % 3 for i in range(rows)]})
    SqlDatabase.open(url, create=True).create_campaign(name, df)
    return url


@pytest.mark.usefixtures("prefect_harness")
def test_sqlite_campaign_runs_to_the_end(sim, tmp_path):
    """... and its STAC collection is named after the campaign, by the run and by `python -m jobdb stac`."""
    import json

    from tasks.results.rebuild import rebuild

    url = sqlite_campaign(tmp_path, 12, name="eu.2024")
    stats = run_jobs(job_db=url, campaign="eu.2024", backends=[backend("a", sim, 3)],
                     start_job="flows.tiling.demo_callbacks:start_job", poll_interval_seconds=0.3,
                     root_dir=str(tmp_path / "results"))
    assert stats["status"] == {"finished": 12}
    df = SqlDatabase.open(url).export("eu.2024")
    assert (df["status"] == "finished").all()
    assert (df["results_status"] == "downloaded").all()
    assert df["id"].is_unique
    assert sim.counters()["jobs_total"] == 12
    assert max(sim.counters()["max_active_per_user"].values()) <= 3
    assert all((tmp_path / "results" / f"job_{j}").is_dir() for j in df["id"])
    collection = json.loads((tmp_path / "results" / "collection.json").read_text())
    assert collection["id"] == "eu.2024"  # not the stem of a path ("eu"), nor the database's name
    again = rebuild(url, str(tmp_path / "results"))  # the only campaign in the database: no name needed
    assert again["id"] == "eu.2024" and again["items"] == 12 and not again["missing"]
    assert json.loads((tmp_path / "results" / "collection.json").read_text())["id"] == "eu.2024"


def test_two_stores_never_hold_the_same_waiting_row(tmp_path):
    url = sqlite_campaign(tmp_path, 30)
    first, second = open_store(url, "eu", str(tmp_path)), open_store(url, "eu", str(tmp_path))
    first.lock.acquire("one")
    second.lock.acquire("two")
    try:
        a, b = set(first.snapshot().waiting), set(second.snapshot().waiting)
        assert a and b and not (a & b)
        first.apply({min(a): {"status": "creating", "backend_name": "x", "job_marker": "m", "attempt": 1}})
        first.persist(force=True)
        assert min(a) not in second.snapshot().waiting
    finally:
        first.lock.release()
        second.lock.release()


@pytest.mark.parametrize("job_db", ["s3://bucket/campaign/jobs.parquet", "https://example.org/jobs.csv",
                                    "mysql://u@h/db"])
def test_unsupported_job_db_forms_fail_in_one_line(job_db):
    with pytest.raises(JobDbError) as info:
        open_store(job_db)
    message = str(info.value)
    assert "\n" not in message and "postgresql://" in message and "sqlite:///" in message


def test_missing_campaign_is_named(tmp_path):
    url = sqlite_campaign(tmp_path, 3)
    with pytest.raises(JobDbError, match="no campaign 'nope'.*eu"):
        open_store(url, "nope")


def test_cli_refuses_bad_job_db_urls_before_anything(prefect_harness, tmp_path, sim, capsys):
    """One line, exit 2, before any job is created, through the command line's `main` in this
    process (the session's Prefect API configured: no server warms up). The real command's exit
    code and one line: tests/test_cli.py::test_bad_input_through_the_real_command_exits_2_in_one_line_before_any_server."""
    from flows.console.cli import main

    url = sqlite_campaign(tmp_path, 3)
    spec = f"a={sim.url},parallel_jobs=2"
    for job_db, extra, needle in (
        ("s3://bucket/campaign/jobs.parquet", [], "unsupported job database s3://"),
        ("postgresql://nobody@127.0.0.1:1/none", [], "cannot open the job database"),
        (url, ["--campaign", "nope"], "--campaign: "),
    ):
        argv = ["--job-db", job_db, "--backend", spec, "--start-job", "flows.tiling.demo_callbacks:start_job", *extra]
        code, err = main(argv), capsys.readouterr().err
        assert code == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], err
    assert sim.counters()["jobs_total"] == 0
    assert SqlDatabase.open(url).counts("eu") == {"not_started": 3}


def test_a_password_in_the_url_is_refused(tmp_path):
    """job_db is a flow parameter: Prefect stores it and shows it. The password belongs in PGPASSWORD."""
    with pytest.raises(JobDbError, match="PGPASSWORD") as info:
        open_store("postgresql://alice:s3cret@127.0.0.1:1/campaigns", "eu")
    assert "s3cret" not in str(info.value)


def test_retry_failed_rows_and_hooks_on_a_sql_campaign(tmp_path):
    url = f"sqlite:///{tmp_path / 'campaigns.db'}"
    df = pd.DataFrame({"tile_id": ["T0", "T1", "T2", "T3"], "status": ["error", "start_failed", "finished", "canceled"],
                       "id": ["j-1", None, "j-3", "j-4"], "backend_name": ["a"] * 4,
                       "error_message": ["out of memory", "KeyError: 'x'", None, None], "attempt": [1, 1, 1, 1],
                       "previous_job_ids": ["j-0", None, None, None],
                       "postprocess_status": [None, None, "failed", None]})
    SqlDatabase.open(url, create=True).create_campaign("eu", df)
    store = open_store(url, "eu", str(tmp_path))
    store.lock.acquire("one")
    try:
        assert store.retry_failed_rows() == 3
        assert store.retry_failed_hooks() == 1
        assert store.snapshot().counts == {"not_started": 3, "finished": 1}
    finally:
        store.lock.release()
    out = SqlDatabase.open(url).export("eu")
    assert list(out["status"]) == ["not_started", "not_started", "finished", "not_started"]
    assert list(out["previous_job_ids"])[:2] == ["j-0,j-1", None] and out.at[3, "previous_job_ids"] == "j-4"
    assert list(out["previous_error"])[:2] == ["out of memory", "KeyError: 'x'"]
    assert out["id"].isna().tolist() == [True, True, False, True]
    assert pd.isna(out.at[2, "postprocess_status"]) and out.at[2, "id"] == "j-3"


def test_a_run_after_a_dead_one_knows_it_and_clears_its_record(tmp_path):
    url = sqlite_campaign(tmp_path, 4)
    dead = open_store(url, "eu", str(tmp_path))
    dead.lock.lease = 0.0  # its heartbeat is stale at once: it is taken for dead
    dead.lock.acquire("dead-flow-run")
    dead.lock._stop.set()  # it stops beating, as a killed process would
    after = open_store(url, "eu", str(tmp_path))
    after.lock.lease = 0.0
    after.lock.acquire("next-flow-run")
    try:
        assert (after.lock.previous_holder or {}).get("flow_run_id") == "dead-flow-run"
    finally:
        after.lock.release()


def test_a_sql_run_holds_waiting_rows_for_every_slot_and_every_job_created_ahead(tmp_path):
    """A run starts at most as many jobs per cycle as it holds waiting rows: with 30 + 40 slots and
    10 + 40 jobs created ahead it holds 120 at once, not a fixed batch of 20 (the ramp-up took
    one cycle per 20 jobs)."""
    from types import SimpleNamespace

    from flows.config.params import BackendSettings
    from flows.run_loop.account_sharing import account_slots

    url = sqlite_campaign(tmp_path, 300)
    store = open_store(url, "eu", str(tmp_path))
    run = SimpleNamespace(store=store, connections={n: SimpleNamespace(account=f"{n}~u") for n in "ab"},
                          backends={"a": BackendSettings(url="http://a.test", parallel_jobs=30, create_ahead=10),
                                    "b": BackendSettings(url="http://b.test", parallel_jobs=40)})
    account_slots(run, "key", None)
    store.lock.acquire("one")
    try:
        assert len(store.snapshot().waiting) == 30 + 10 + 40 + 40
    finally:
        store.lock.release()
