"""The interrupted run's message says what is where: jobs running on backends, jobs created ahead and
jobs whose create may be in flight are three different things to an operator deciding what to do."""
from __future__ import annotations

import logging

from flows.run_loop.cycle import CycleEnd
from flows.run_loop.ending import RunInterrupted, final_state


def interrupted_message(status):
    stats = {"status": status, "rows": sum(status.values()), "terminal": status.get("finished", 0),
             "failed_this_run": 0, "worked_this_run": 0}
    end = CycleEnd(reason="interrupted", all_started_at=None, refused={}, cycles=1)
    state = final_state(None, end, stats, 0.05, logging.getLogger("test"))
    assert isinstance(state.data, RunInterrupted) and stats["outcome"] == "interrupted"
    return state.message


def test_rows_being_created_are_not_called_running_jobs():
    message = interrupted_message({"creating": 3, "running": 1, "queued": 1, "not_started": 5})
    assert message.startswith("interrupted: 2 jobs still running on backends, 3 being created;")


def test_jobs_created_ahead_and_being_created_are_told_apart_from_running_ones():
    message = interrupted_message({"created": 2, "creating": 1, "running": 4, "finished": 3})
    assert message.startswith("interrupted: 4 jobs still running on backends, 2 created and not started, "
                              "1 being created;")
