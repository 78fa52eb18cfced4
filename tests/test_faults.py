"""Fault matrix: the flow comes through backend faults without crashing, duplicating or losing jobs.

Real Prefect (session harness), simulated backends over HTTP. Each scenario checks: the flow
completes, no job title twice and one job per row that has one, no `start_failed` from a
transient fault, every row terminal, every finished job downloaded with the right size.
Run with `-s` to see the table (also printed by the last test).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional

import pandas as pd
import pytest

import flows.run_loop.applying as applying_module
import flows.run_jobs as run_jobs_module
from flows.run_jobs import run_jobs
from jobdb import TERMINAL_STATUSES
from simulator import start_simulator
from tests.flow_helpers import assert_results_complete, backend, fast_config, make_db, manager_requests_per_job

pytestmark = pytest.mark.usefixtures("prefect_harness")

ROWS = 12
PARALLEL = 4
POLL = 0.3
TABLE: List[Dict] = []


def run_scenario(name: str, tmp_path, knobs: List[Dict], during: Optional[Callable] = None,
                 rows: int = ROWS, start_job: str = "flows.tiling.demo_callbacks:start_job") -> Dict:
    sims = [start_simulator(fast_config(**{"run_time": 0.3, **k})) for k in knobs]
    stop = threading.Event()
    helper = threading.Thread(target=during, args=(sims, stop), daemon=True) if during else None
    try:
        db = make_db(tmp_path / "jobs.parquet", rows)
        if helper:
            helper.start()
        t0 = time.monotonic()
        stats = run_jobs(job_db=str(db), backends=[backend(f"b{i}", s, PARALLEL) for i, s in enumerate(sims)],
                         start_job=start_job, poll_interval_seconds=POLL, failure_threshold=1.0)
        elapsed = time.monotonic() - t0
        counters = [s.counters() for s in sims]
    finally:
        stop.set()
        if helper:
            helper.join(30)
        for s in sims:
            s.stop()
    df = pd.read_parquet(db)
    faults: Dict[str, int] = {}
    for c in counters:
        for kind, n in c["faults_injected"].items():
            faults[kind] = faults.get(kind, 0) + n
    result = {
        "scenario": name, "rows": len(df), "finished": int((df["status"] == "finished").sum()),
        "error": int((df["status"] == "error").sum()), "start_failed": int((df["status"] == "start_failed").sum()),
        "duplicates": sum(len(t) for c in counters for t in c["duplicate_titles"].values()),
        "jobs": sum(c["jobs_total"] for c in counters), "rows_with_job": int(df["id"].notna().sum()),
        "faults": faults,
        "mgr_req_per_row": round(sum(manager_requests_per_job(c, 1) for c in counters) / len(df), 2),
        "seconds": round(elapsed, 1),
    }
    TABLE.append(result)
    # the invariants
    assert stats["rows"] == rows  # the flow completed and returned
    assert df["status"].isin(TERMINAL_STATUSES).all(), df["status"].value_counts()
    assert result["duplicates"] == 0, [c["duplicate_titles"] for c in counters]
    assert result["jobs"] == result["rows_with_job"] == rows
    assert result["start_failed"] == 0, df.loc[df["status"] == "start_failed", "error_message"].tolist()
    for c in counters:
        assert max(c["max_active_per_user"].values(), default=0) <= PARALLEL
    return {"df": df, "db": db, "counters": counters, "result": result, "stats": stats}


def _after_starts(n: int, action: Callable, sim_index: int = 0):
    """A `during` helper: once `n` jobs were started on sims[sim_index], run action(sims)."""
    def during(sims, stop):
        deadline = time.monotonic() + 600  # a bound for hangs (a loaded machine)
        while not stop.is_set() and time.monotonic() < deadline:
            if sims[sim_index].counters()["job_starts"] >= n:
                action(sims)
                return
            stop.wait(0.05)  # polling another component's counter, bounded
    return during


SCENARIOS = {
    "429 on 20% of POSTs, no Retry-After": [dict(p_429=0.2, retry_after=None)],
    "token bucket 12/s, burst 6": [dict(rate_limit_per_second=12.0, rate_limit_burst=6)],
    "10% lost responses on POST": [dict(p_lost_response=0.1)],
    "2% random 5xx": [dict(p_5xx=0.02, seed=3)],
    "10% job errors": [dict(p_error=0.1, seed=11)],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_scenario(name, tmp_path):
    run = run_scenario(name, tmp_path, SCENARIOS[name])
    df, result = run["df"], run["result"]
    if "job errors" in name:
        assert result["error"] >= 1 and result["finished"] + result["error"] == ROWS
        assert df.loc[df["status"] == "error", "error_message"].notna().all()
    else:
        assert result["finished"] == ROWS
        assert sum(result["faults"].values()) > 0, "the scenario injected no fault: it proves nothing"
    assert_results_complete(tmp_path, df, asset_size=2048)


def test_outage_of_one_of_two_backends(tmp_path):
    """8 s of 503 on every request to one backend once it has started jobs; the other keeps working."""
    run = run_scenario("8 s outage of 1 of 2 backends", tmp_path, [dict(), dict()],
                       during=_after_starts(2, lambda sims: sims[0].outage(8.0)))
    assert run["result"]["faults"].get("outage", 0) > 0
    assert run["result"]["finished"] == ROWS
    assert_results_complete(tmp_path, run["df"], asset_size=2048)


def test_expired_tokens_are_renewed(tmp_path):
    """Tokens live 1 s; the run takes longer: 403 TokenInvalid is answered by a new login, not a failure."""
    run = run_scenario("token TTL 1 s (403 TokenInvalid)", tmp_path, [dict(token_ttl=1.0, run_time=0.8)])
    counters = run["counters"][0]
    assert sum(n for k, n in counters["requests"].items() if k.endswith(" 403")) > 0  # tokens did expire
    assert counters["requests"].get("GET /credentials/basic 200", 0) > 1
    assert run["result"]["finished"] == ROWS
    assert_results_complete(tmp_path, run["df"], asset_size=2048)


def test_tokens_renewed_proactively(tmp_path, monkeypatch):
    """With a short renewal period the flow logs in again before any token expires: no 403 at all."""
    monkeypatch.setattr(run_jobs_module, "TOKEN_REFRESH_SECONDS", 0.5)
    run = run_scenario("proactive token renewal every 0.5 s", tmp_path, [dict(token_ttl=30.0, run_time=0.8)],
                       rows=8)
    counters = run["counters"][0]
    assert counters["requests"].get("GET /credentials/basic 200", 0) >= 3
    assert not any(k.endswith(" 403") for k in counters["requests"])


def test_concurrent_job_limit_sends_rows_back_to_wait(tmp_path, monkeypatch):
    """The backend allows 2 active jobs while we think 4: refused starts wait, never `start_failed`."""
    monkeypatch.setattr(applying_module, "RETRY_HOLD_SECONDS", 0.5)
    run = run_scenario("400 ConcurrentJobLimit (2 allowed, 4 slots)", tmp_path,
                       [dict(max_queued_per_user=2, run_time=0.5)], rows=8)
    counters = run["counters"][0]
    assert counters["requests"].get("POST /jobs/{id}/results 400", 0) > 0  # refusals happened
    assert max(counters["max_active_per_user"].values()) <= 2
    assert run["result"]["finished"] == 8
    assert_results_complete(tmp_path, run["df"], asset_size=2048)


def test_invalid_json_for_one_job(tmp_path):
    """One job's details and results answer invalid JSON: that row gets a clear error, the rest finish."""
    run = run_scenario("invalid JSON for 1 job", tmp_path, [dict(corrupt_title="T003")], rows=6)
    df = run["df"]
    bad = df[df["tile_id"] == "T003"].iloc[0]
    good = df[df["tile_id"] != "T003"]
    assert run["result"]["faults"].get("corrupt_json", 0) >= 1
    assert (good["status"] == "finished").all() and (good["results_status"] == "downloaded").all()
    assert bad["status"] == "finished"  # as the listing says: the job ran
    assert "not valid" in str(bad["error_message"]) and bad["id"] in str(bad["error_message"])
    # the state and its message in two columns (issue 11): results_status + results_error
    assert bad["results_status"] == "failed" and "not valid" in str(bad["results_error"])
    assert_results_complete(tmp_path, good, asset_size=2048)
    assert not (tmp_path / f"job_{bad['id']}" / f"job_{bad['id']}.json").exists()
    # not retried (three times, with 2 + 10 + 30 s delays): an invalid answer does not improve by
    # waiting. Every job's metadata is read once, the invalid one at most once more.
    requests = run["counters"][0]["requests"]
    assert requests.get("GET /jobs/{id} 200", 0) <= 6 + 1, requests


def test_zz_print_fault_table():
    """Print what the scenarios above measured (`pytest -s` shows it)."""
    assert TABLE, "run the scenarios first"
    header = ("scenario", "rows", "finished", "error", "start_failed", "duplicates", "jobs",
              "faults", "mgr_req_per_row", "seconds")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in TABLE:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items()) if v) or "-"
        lines.append("| " + " | ".join(str(r[h]) if h != "faults" else faults for h in header) + " |")
    print("\n" + "\n".join(lines))
