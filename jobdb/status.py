"""Job statuses, the sets the rest of the project asks about, and every legal status change: defined once.

The values are openeo's `MultiBackendJobManager` statuses plus our `creating` (the persisted
intent before `POST /jobs`), so a job DB stays readable by openeo's manager, and a DB it wrote
reads here. Every module names a status through the constants below, never a string of its own.

Transitions. `TRANSITIONS` lists, for each status, the statuses a row may move to: the moves the
flow decides (the scheduler's intents, a start's answer, a resubmission) and the moves a job's
backend reports (a polled job may go from any active status to any openEO job status: the job's
status is the backend's to say). A row may always be "moved" to the status it has. The stores
check every update against the table (`check_transitions`) and raise `IllegalTransition` before
anything changes: a rule that writes an impossible change is a bug, and the run stops on it.

Statuses from outside the flow:
- written by openeo's manager into a job DB: all ours, plus `queued_for_start_failed` (a job was
  created, its start could not be submitted). `read_stored` reads it as `created` (the flow starts
  it), and an openEO API 0.4 `submitted` as `queued`. Any other value on a row with a job id was
  written from a backend we do not know: read as `queued`, so the next poll asks the backend and
  records its real status. A row with an unknown status and no job id is bad input (one line
  naming the rows, before any job is created).
- reported by a backend for a job: `from_backend` keeps the openEO job statuses (`created`,
  `queued`, `running`, `finished`, `error`, `canceled`), reads `submitted` as `queued`, and returns
  None for anything else: the row keeps its status and the next poll asks again.

Exceptions to "no status literal outside this module" (tests/test_status_model.py checks it):
- `simulator/`: an openEO backend, not a job DB; its job statuses are the openEO API's.
- dictionary keys and subscripts (a task's fact `{"error": why}`, `{"done": hook}`): names of
  fields, not statuses; the other states that spell like one (results, hooks) are defined here.
"""
from __future__ import annotations

from typing import Callable, FrozenSet, Mapping, Optional, Tuple

NOT_STARTED = "not_started"
CREATING = "creating"  # ours: the create call may be in flight, no job id known yet
CREATED = "created"
QUEUED_FOR_START = "queued_for_start"
QUEUED = "queued"
RUNNING = "running"
FINISHED = "finished"
ERROR = "error"
CANCELED = "canceled"
START_FAILED = "start_failed"
SKIPPED = "skipped"

STATUSES: Tuple[str, ...] = (NOT_STARTED, CREATING, CREATED, QUEUED_FOR_START, QUEUED, RUNNING, FINISHED, ERROR,
                             CANCELED, START_FAILED, SKIPPED)
TERMINAL = frozenset({FINISHED, ERROR, CANCELED, START_FAILED, SKIPPED})
# A job of this row exists (or may) on its backend and counts against its slots.
HOLDS_SLOT = frozenset({CREATING, CREATED, QUEUED_FOR_START, QUEUED, RUNNING})
# Rows whose backend job the flow follows through the backend's job listing.
POLLED = frozenset({CREATED, QUEUED_FOR_START, QUEUED, RUNNING})
# Rows a start task works on: it answers for them (the intents the scheduler persists before it).
STARTING = frozenset({CREATING, QUEUED_FOR_START})
# Active rows that have a job id (all but `creating`).
NEEDS_JOB_ID = POLLED
# Ended without results: these count against a run's failure threshold.
FAILED = frozenset({ERROR, CANCELED, START_FAILED})
# Failed rows that the flow resubmits itself (`max_attempts`); `--retry-failed` takes all of FAILED.
RESUBMITTABLE = frozenset({ERROR, START_FAILED})
# Ended with a job whose post-processing hook may run (`on_job_done` / `on_job_error`).
HOOKED = frozenset({FINISHED, ERROR})
# Rows that a run may still start.
WAITING = frozenset({NOT_STARTED})

# The statuses of a job in the openEO API: what a backend may report.
BACKEND_STATUSES = frozenset({CREATED, QUEUED, RUNNING, FINISHED, ERROR, CANCELED})
BACKEND_ENDED = frozenset({FINISHED, ERROR, CANCELED})
BACKEND_STARTED = frozenset({QUEUED, RUNNING, FINISHED, ERROR, CANCELED})  # a start request was taken
# A job found by its marker after a crash is taken up as it is when it is active, else as QUEUED
# (the next poll sees it end and records it as for any other job).
ADOPTABLE = frozenset({CREATED, QUEUED, RUNNING})

# Our per-row results state (column `results_status`); a failure's message goes to `results_error`.
RESULTS_DOWNLOADED = "downloaded"
RESULTS_FAILED = "failed"
RESULTS_LOGS_SAVED = "logs_saved"  # an `error` row whose error logs were saved
# Which post-processing hook runs for an ended job (`on_job_done` / `on_job_error`), and how it went
# (column `postprocess_status`; a failure's message goes to `postprocess_error`).
HOOK_DONE = "done"
HOOK_ERROR = "error"
POSTPROCESS_DONE = "done"
POSTPROCESS_FAILED = "failed"

TRANSITIONS: Mapping[str, FrozenSet[str]] = {
    # the scheduler's intent to create a job (persisted before POST /jobs)
    NOT_STARTED: frozenset({CREATING}),
    # a start's answer; or, after a crash, the job found by its marker (or none: back to waiting)
    CREATING: frozenset({NOT_STARTED, CREATED, SKIPPED, START_FAILED}) | BACKEND_STATUSES,
    # the scheduler's intent to start it; back to waiting when its backend refused for good;
    # or what the backend says of it
    CREATED: frozenset({QUEUED_FOR_START, NOT_STARTED}) | BACKEND_STATUSES,
    # a start's answer (handed back as `created`, or `start_failed`), or the backend's word
    QUEUED_FOR_START: frozenset({START_FAILED}) | BACKEND_STATUSES,
    QUEUED: BACKEND_STATUSES,
    RUNNING: BACKEND_STATUSES,
    FINISHED: frozenset(),
    SKIPPED: frozenset(),
    # resubmission (`max_attempts`) and `--retry-failed`: a new job for the row
    ERROR: frozenset({NOT_STARTED}),
    CANCELED: frozenset({NOT_STARTED}),
    START_FAILED: frozenset({NOT_STARTED}),
}
assert set(TRANSITIONS) == set(STATUSES)

# Values openeo's manager (or an old backend) writes that mean one of ours.
STORED_ALIASES: Mapping[str, str] = {"queued_for_start_failed": CREATED, "submitted": QUEUED}


class IllegalTransition(RuntimeError):
    """An update would move a row between two statuses the table does not connect (a bug in a rule)."""

    def __init__(self, row: int, old: Optional[str], new: object, where: str = ""):
        self.row, self.old, self.new = row, old, new
        allowed = ", ".join(sorted(TRANSITIONS.get(old or "", ()))) or "nothing"
        super().__init__(f"{where + ': ' if where else ''}row {row}: illegal status change {old!r} -> {new!r} "
                         f"(from {old!r} allowed: {allowed})")


def is_legal(old: Optional[str], new: str) -> bool:
    return new == old or new in TRANSITIONS.get(old or "", ())


def check_transitions(updates: Mapping[int, Mapping[str, object]], status_of: Callable[[int], Optional[str]],
                      where: str = "") -> None:
    """Raise IllegalTransition for the first update whose `status` the row may not take.

    `status_of(row)` is the row's status now; None skips the row (one the store does not hold)."""
    for row, values in updates.items():
        if "status" not in values:
            continue
        old = status_of(row)
        if old is not None and not is_legal(old, values["status"]):  # type: ignore[arg-type]
            raise IllegalTransition(row, old, values["status"], where)


def from_backend(value: object) -> Optional[str]:
    """A job status a backend reported, as ours; None when it is none we know (ask again later)."""
    value = STORED_ALIASES.get(value, value) if isinstance(value, str) else None
    return value if value in BACKEND_STATUSES else None


def read_stored(value: object, has_job_id: bool) -> Optional[str]:
    """A status read from a job DB, as ours (see the module docstring); None: unreadable."""
    if value in TRANSITIONS:
        return value  # type: ignore[return-value]
    if isinstance(value, str) and value in STORED_ALIASES:
        return STORED_ALIASES[value]
    return QUEUED if has_job_id and isinstance(value, str) and value else None

