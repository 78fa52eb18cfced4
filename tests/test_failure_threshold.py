"""The failure threshold at its boundaries: with failure_threshold=0.5 and 4 rows, 1 or 2 failed
rows end Completed (exit 0) and 3 end Failed (exit 1). Which rows fail is chosen per row (the
simulator fails jobs whose title says so), never left to chance."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from flows.console.cli import main
from flows.run_jobs import RunFailed, run_jobs
from simulator import start_simulator
from tests.flow_helpers import PASSWORD_ENV, backend, fast_config, make_db
from tests.row_callbacks import MUST_FAIL

CALLBACK = "tests.row_callbacks:start_job"


@pytest.fixture
def failing_sim():
    sim = start_simulator(fast_config(error_title=MUST_FAIL))
    yield sim
    sim.stop()


def db_failing(path, failing: int):
    return make_db(path, 4, fail=[i < failing for i in range(4)])


@pytest.mark.usefixtures("prefect_harness")
# 1 failing row: the default run has it through the command line below (exit 0: Completed); 2 is the boundary
@pytest.mark.parametrize("failing, completed", [pytest.param(1, True, marks=pytest.mark.slow), (2, True), (3, False)])
def test_half_of_the_rows_may_fail(failing_sim, tmp_path, failing, completed):
    db = db_failing(tmp_path / "jobs.parquet", failing)
    state = run_jobs(job_db=str(db), backends=[backend("a", failing_sim, 4)], start_job=CALLBACK,
                     poll_interval_seconds=0.3, failure_threshold=0.5, return_state=True)
    df = pd.read_parquet(db)
    assert df.loc[df["fail"], "status"].eq("error").all() and df.loc[~df["fail"], "status"].eq("finished").all()
    assert state.is_completed() is completed and state.is_failed() is not completed, state
    if not completed:
        assert f"{failing} of 4 rows failed" in state.message
        assert isinstance(state.result(raise_on_failure=False), RunFailed)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("failing, code", [(1, 0), (3, 1)])
def test_the_command_line_exit_code_follows_the_threshold(failing_sim, tmp_path, capsys, failing, code):
    db = db_failing(tmp_path / "jobs.parquet", failing)
    os.environ[PASSWORD_ENV] = failing_sim.config.password
    argv = ["--job-db", str(db), "--backend", f"a={failing_sim.url},parallel_jobs=4,user=alice,password_env="
            f"{PASSWORD_ENV}", "--start-job", CALLBACK, "--poll-interval", "0.3", "--failure-threshold", "0.5"]
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert f"{failing} error" in out
    assert ("run failed" in err) is (code == 1)
