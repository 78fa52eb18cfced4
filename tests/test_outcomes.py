"""Outcomes without Prefect runs: the exit-code table, the failure streaks that stop a backend,
retrying failed rows and hooks in the store. (The runs themselves: tests/test_run_outcomes.py.)"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from flows.rules.bookkeeping import FailureStreaks, RowNow, effects_of, error_signature
from flows.run_loop.outcomes import RunOutcome, outcome_table
from jobdb.store import JobStore
from tasks.outcome import Outcome, Step
from tests.flow_helpers import make_db

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_has_the_one_table_of_outcomes():
    assert outcome_table() in (ROOT / "README.md").read_text()


def test_every_outcome_has_its_own_exit_code_and_no_refusal_or_work_left_looks_failed():
    codes = [o.exit_code for o in RunOutcome]
    assert len(set(codes)) == len(codes)
    assert RunOutcome.DONE.exit_code == 0 and RunOutcome.INTERRUPTED.exit_code == 130
    for outcome in (RunOutcome.WORK_LEFT, RunOutcome.SKIPPED):
        state = outcome.state("m")
        assert state.is_completed() and state.name == outcome.state_name != "Completed"
        assert RunOutcome.of_state(state) is outcome
    assert RunOutcome.of_state(RunOutcome.DONE.state("m")) is RunOutcome.DONE
    assert RunOutcome.of_state(RunOutcome.FAILED.state("m")).exit_code == 1
    assert RunOutcome.of_state(RunOutcome.INTERRUPTED.state("m")) is RunOutcome.INTERRUPTED


def test_identical_failures_in_a_row_stop_a_backend_and_anything_else_resets_the_streak():
    streaks = FailureStreaks(3)
    assert streaks.record("a", "start", "KeyError: 'x'") is None
    assert streaks.record("a", "start", "KeyError: 'x'") is None
    assert streaks.record("a", "start", None) is None  # a start that worked
    assert streaks.record("a", "start", "KeyError: 'x'") is None
    assert streaks.record("a", "start", "ValueError: other") is None  # another error starts a new streak
    assert streaks.record("a", "start", "KeyError: 'x'") is None  # and so does the first one again
    assert streaks.record("a", "job", "out of memory in job j-1") is None  # jobs count apart from starts
    assert streaks.record("b", "job", "out of memory in job j-1") is None  # and backends apart
    assert streaks.record("a", "job", "out of memory in job j-2") is None  # the same error, another job id
    why = streaks.record("a", "job", "out of memory in job j-3")
    assert why and "3 jobs in a row failed with the same error: out of memory" in why
    assert streaks.tripped == {"a": why}
    assert streaks.record("a", "job", "out of memory in job j-4") is None  # told once
    off = FailureStreaks(0)
    assert all(off.record("a", "start", "same") is None for _ in range(50))
    assert error_signature("job j-1a2b failed after 12 s") == error_signature("job j-9f8e failed after 3 s")


def test_outcomes_become_attempts_for_the_streaks():
    start = Outcome(Step.START, "a", {0: {"status": "start_failed", "error_message": "KeyError: 'x'"},
                                     1: {"status": "queued", "id": "j-1"},
                                     2: {"status": "not_started", "handed_back": "rate limit"}})
    effects = effects_of(start, lambda row: RowNow("creating"))
    assert effects.attempts == [("start", "KeyError: 'x'"), ("start", None)]
    logs = Outcome(Step.ERROR_LOGS, "a", {3: {"error_message": "out of memory"}})
    assert effects_of(logs, lambda row: RowNow("error")).attempts == [("job", "out of memory")]
    poll = Outcome(Step.POLL, "a", {4: {"status": "finished"}, 5: {"status": "running"}})
    assert effects_of(poll, lambda row: RowNow("running")).attempts == [("job", None)]


def test_retry_failed_rows_keeps_their_history_and_failed_hooks_run_again(tmp_path):
    db = make_db(tmp_path / "jobs.parquet", 4, status=["error", "start_failed", "finished", "canceled"],
                 id=["j-1", None, "j-3", "j-4"], backend_name=["a", "a", "a", "a"],
                 error_message=["out of memory", "KeyError: 'x'", None, None],
                 attempt=[1, 1, 1, 1], previous_job_ids=["j-0", None, None, None],
                 postprocess_status=[None, None, "failed", None], postprocess_error=[None, None, "boom", None])
    store = JobStore.open(db)
    assert store.retry_failed_rows() == 3
    assert store.retry_failed_hooks() == 1
    df = store.dataframe()
    assert list(df["status"]) == ["not_started", "not_started", "finished", "not_started"]
    assert list(df["previous_job_ids"])[:2] == ["j-0,j-1", None] and df.at[3, "previous_job_ids"] == "j-4"
    assert list(df["previous_error"])[:2] == ["out of memory", "KeyError: 'x'"]
    assert list(df["attempt"]) == [1, 1, 1, 1]  # the next job is attempt 2, with its own marker
    assert df["id"].isna().tolist() == [True, True, False, True]
    assert pd.isna(df.at[2, "postprocess_status"]) and df.at[2, "id"] == "j-3"
