"""The flow's pure rules: what an outcome writes to the DB, status changes, CLI parsing."""
import argparse

import pytest

from flows.rules import bookkeeping as bk
from flows.config.backend_spec import parse_backend
from jobdb.paths import JobDbPaths
from tasks.outcome import Outcome, Step


def now_of(statuses, pinned=()):
    return lambda row: bk.RowNow(statuses[row], None, row in pinned)


def test_status_change_fills_openeo_columns():
    metadata = {"usage": {"cpu": {"value": 12, "unit": "cpu-seconds"}, "memory": {"value": 5, "unit": "mb-seconds"}},
                "costs": 1.5}
    update = bk.status_change(bk.RowNow("running", "2024-01-01T00:00:00Z"), "finished", metadata)
    assert update == {"status": "finished", "cpu": "12 cpu-seconds", "memory": "5 mb-seconds", "costs": 1.5}
    started = bk.status_change(bk.RowNow("queued", None), "running", None)
    assert started["status"] == "running" and started["running_start_time"].endswith("Z")


def test_start_outcomes_hand_back_hold_and_unpin():
    outcome = Outcome(Step.START, "a", {
        0: {"status": "queued", "id": "j0", "start_time": "t", "error_message": None},
        1: {"status": "not_started", "handed_back": "429"},
        2: {"status": "not_started", "handed_back": "429"},
        3: {"crashed": "boom"},
        4: {"status": "created", "id": "j4", "handed_back": "402", "refused": "402 no credits"},
    })
    effects = bk.effects_of(outcome, now_of({i: "creating" for i in range(5)}, pinned={2}))
    assert effects.updates[0]["status"] == "queued" and effects.updates[0]["id"] == "j0"
    assert effects.updates[1] == {"status": "not_started", "job_marker": None, "id": None, "backend_name": None}
    assert "backend_name" not in effects.updates[2]  # the user chose its backend: it stays
    assert 3 not in effects.updates and effects.warnings  # crashed: left `creating` for the reconcile
    assert effects.updates[4] == {"status": "created", "id": "j4"}
    assert effects.hold == {1, 2, 4} and effects.refused == "402 no credits"


def test_poll_outcome_ignores_rows_that_changed_meanwhile():
    outcome = Outcome(Step.POLL, "a", {0: {"status": "running"}, 1: {"status": "finished"}})
    effects = bk.effects_of(outcome, now_of({0: "queued", 1: "not_started"}))
    assert set(effects.updates) == {0} and effects.changes == [(0, "queued", "running")]


def test_reconcile_adopts_found_jobs_and_gives_back_the_rest():
    outcome = Outcome(Step.RECONCILE, "a", {0: {"job": {"id": "j0", "status": "finished"}}, 1: {"job": None}})
    effects = bk.effects_of(outcome, now_of({0: "creating", 1: "creating"}))
    assert effects.updates[0] == {"status": "queued", "id": "j0"}  # ended meanwhile: polled, then downloaded
    assert effects.updates[1]["status"] == "not_started"


def test_a_job_not_found_that_may_still_come_leaves_the_row_creating():
    outcome = Outcome(Step.RECONCILE, "a", {0: {"job": None, "may_still_come": True}, 1: {"job": None},
                                            2: {"job": {"id": "j2", "status": "created"}, "may_still_come": True}})
    effects = bk.effects_of(outcome, now_of({0: "creating", 1: "creating", 2: "creating"}))
    assert 0 not in effects.updates  # its POST may still create the job: not created again yet
    assert effects.updates[1]["status"] == "not_started" and effects.updates[2] == {"status": "created", "id": "j2"}
    unanswered = bk.effects_of(Outcome(Step.CREATE, "a", {0: {"status": "creating", "unanswered": "ReadTimeout"}}),
                               now_of({0: "creating"}))
    assert unanswered.updates == {} and unanswered.warnings


def test_download_and_error_log_outcomes():
    down = bk.effects_of(Outcome(Step.DOWNLOAD, "a", {0: {"assets": 1}, 1: {"error": "x"}}), now_of({}))
    assert down.updates == {0: {"results_status": "downloaded", "results_error": None},
                            1: {"results_status": "failed", "results_error": "x"}}
    logs = bk.effects_of(Outcome(Step.ERROR_LOGS, "a", {0: {"error_message": "no data", "log_entries": 1}}), now_of({}))
    assert logs.updates == {0: {"results_status": "logs_saved", "error_message": "no data"}}


def test_a_crashed_download_is_made_again_after_a_hold_a_few_times_then_its_results_fail():
    """Prefect may crash a download/error-log task run before its body (ConcurrencySlotAcquisitionError
    when its server answers a tag-slot request with an error under load): the results are still on
    the backend, so the row is held and downloaded again, not marked failed at once."""
    from tasks.retry_policy import FINISH_TASK_RESUBMITS

    for step in (Step.DOWNLOAD, Step.ERROR_LOGS):
        crashed = Outcome(step, "a", {0: {"crashed": "ConcurrencySlotAcquisitionError"}}, crashed="x")
        again = bk.effects_of(crashed, lambda row: bk.RowNow("finished", None, False, FINISH_TASK_RESUBMITS - 1))
        assert again.updates == {} and again.hold == {0} and again.resubmitted == {0}
        given_up = bk.effects_of(crashed, lambda row: bk.RowNow("finished", None, False, FINISH_TASK_RESUBMITS))
        assert given_up.updates[0]["results_status"] == "failed" and given_up.hold == set()
        assert "ConcurrencySlotAcquisitionError" in given_up.updates[0]["results_error"]


def test_the_dispatcher_reports_a_download_task_that_ended_without_an_answer_as_crashed_not_failed():
    from flows.run_loop.dispatcher import Dispatcher, Submission

    for step in (Step.DOWNLOAD, Step.ERROR_LOGS):
        outcome = Dispatcher._crashed(Submission(step, "a", (3, 4)))
        assert outcome.rows == {3: {"crashed": "task ended without an answer"},
                                4: {"crashed": "task ended without an answer"}}
    hook = Dispatcher._crashed(Submission(Step.HOOK, "a", (5,)))  # user code that may have run in part
    assert hook.rows == {5: {"error": "task ended without an answer"}}


def test_markers_differ_per_db_and_attempt():
    a, b = JobDbPaths.of("/x/jobs.csv"), JobDbPaths.of("/y/jobs.csv")
    assert a.row_marker(7).endswith("-r7") and a.marker_prefix != b.marker_prefix
    assert a.row_marker(7, attempt=2) != a.row_marker(7)
    assert a.artifact_key("progress") != b.artifact_key("progress")


def test_cli_backend_option():
    assert parse_backend("cdse=https://x.test,parallel_jobs=4,user=al,password_env=PW") == {
        "name": "cdse", "url": "https://x.test", "parallel_jobs": 4,
        "auth": {"type": "basic", "username": "al", "password_env": "PW"},
    }
    with pytest.raises(argparse.ArgumentTypeError, match="parallel_jobs must be an integer"):
        parse_backend("a=http://x,parallel_jobs=many")
    with pytest.raises(argparse.ArgumentTypeError, match="name=URL"):
        parse_backend("http://x")
