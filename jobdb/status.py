"""Job statuses and the sets the rest of the project asks about, defined once.

The values are openeo's `MultiBackendJobManager` statuses plus our `creating` (the persisted
intent before `POST /jobs`), so a job DB stays readable by openeo's manager.
"""
from __future__ import annotations

from enum import Enum


class JobStatus(str, Enum):
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

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self.value in TERMINAL

    @property
    def holds_slot(self) -> bool:
        """A job of this row exists (or may) on its backend and counts against its slots."""
        return self.value in HOLDS_SLOT

    @property
    def is_failure(self) -> bool:
        return self.value in FAILED


STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
TERMINAL = frozenset({"finished", "error", "canceled", "start_failed", "skipped"})
HOLDS_SLOT = frozenset({"creating", "created", "queued_for_start", "queued", "running"})
# Rows whose backend job the flow follows through the backend's job listing.
POLLED = frozenset({"created", "queued_for_start", "queued", "running"})
# Ended without results: these count against a run's failure threshold.
FAILED = frozenset({"error", "canceled", "start_failed"})
# Rows that a run may still start.
WAITING = frozenset({"not_started"})

# Our per-row results state (column `results_status`); a failure's message goes to `results_error`.
RESULTS_DOWNLOADED = "downloaded"
RESULTS_FAILED = "failed"
RESULTS_LOGS_SAVED = "logs_saved"  # an `error` row whose error logs were saved
