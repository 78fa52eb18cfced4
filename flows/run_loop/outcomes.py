"""How a run ended: one exit code and one Prefect state per outcome, defined once.

The CLI exits with `RunOutcome.exit_code`, the flow ends in `RunOutcome.state(...)`, and the
README's table is `outcome_table()` (tests/test_outcomes.py checks it is the one in README.md).
Cron jobs read the exit code; Prefect automations read the state: its type (Completed, Failed,
Cancelled) and its name, which is also the event a flow run emits (`prefect.flow-run.<name>`).
"Work left" and "skipped" are Completed *types* (no Failed automation fires, a schedule goes on)
with their own *names* ("Incomplete", "Skipped"), so an automation can tell them from "done".
"""
from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # the CLI reads the exit codes before Prefect is imported
    from prefect.states import State


class RunOutcome(Enum):
    # name = (exit code, Prefect state type, state name, what it means / what to do)
    DONE = (0, "Completed", "Completed", "every row ended and failures stayed within `failure_threshold`")
    FAILED = (1, "Failed", "Failed", "more rows this run worked on failed than `failure_threshold` allows (a failed "
                                     "`on_job_done`/`on_job_error` hook counts as a failure)")
    BAD_INPUT = (2, "Failed", "Failed", "bad input, found before any job was created; the DB is unchanged "
                                        "(Failed: a deployment with a wrong parameter needs a person)")
    WORK_LEFT = (3, "Completed", "Incomplete", "stopped with work left: time up (`max_runtime_minutes`), no backend "
                                               "accepts new jobs (credits used up), or a backend stopped after "
                                               "repeated identical failures; run again to continue")
    SKIPPED = (75, "Completed", "Skipped", "refused: another live run owns the job DB; nothing was changed "
                                          "(75 = EX_TEMPFAIL, try again later)")
    INTERRUPTED = (130, "Cancelled", "Cancelled", "interrupted (Ctrl-C, SIGTERM, Cancel in the Prefect UI); run "
                                                  "the same command again to resume")

    def __init__(self, exit_code: int, state_type: str, state_name: str, meaning: str):
        self.exit_code = exit_code
        self.state_type = state_type
        self.state_name = state_name
        self.meaning = meaning

    def state(self, message: str, data: Any = None) -> "State":
        """The flow run's final state for this outcome."""
        from prefect.states import Cancelled, Completed, Failed

        make = {"Completed": Completed, "Failed": Failed, "Cancelled": Cancelled}[self.state_type]
        if self.state_name != self.state_type:
            return make(message=message, data=data, name=self.state_name)
        return make(message=message, data=data)

    @classmethod
    def of_state(cls, state: "State", bad_input: bool = False) -> "RunOutcome":
        """The outcome a final state stands for (what the CLI exits with)."""
        if state.is_cancelled():
            return cls.INTERRUPTED
        if state.is_completed():
            for outcome in (cls.WORK_LEFT, cls.SKIPPED):
                if state.name == outcome.state_name:
                    return outcome
            return cls.DONE
        return cls.BAD_INPUT if bad_input else cls.FAILED

    @classmethod
    def of_exit_code(cls, code: int) -> Optional["RunOutcome"]:
        return next((o for o in cls if o.exit_code == code), None)


def outcome_table() -> str:
    """The README's table of outcomes (markdown)."""
    lines = ["| exit code | Prefect state (type / name) | outcome |", "|---|---|---|"]
    for outcome in RunOutcome:
        state = outcome.state_type if outcome.state_name == outcome.state_type \
            else f"{outcome.state_type} / `{outcome.state_name}`"
        lines.append(f"| `{outcome.exit_code}` | {state} | {outcome.meaning} |")
    return "\n".join(lines)
