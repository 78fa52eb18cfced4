"""Applying what the tasks reported: one cycle's outcomes → one store update, and the run's memory
of them (rows held before another try, backends that refused for good or tripped a failure streak,
rows this run worked on and which of them failed, job metadata waiting for its download).

The rules (an outcome → updates, holds, log lines) are pure and live in `flows/rules/bookkeeping.py`;
this module applies them in order, each outcome seeing the rows as the earlier ones left them, and
tells every status change once (a log line and an event) after the change is stored.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Set

from flows.rules.bookkeeping import FailureStreaks, RowNow, effects_of
from flows.rules.polling import PollClock
from jobdb.interface import CampaignStore
from jobdb.status import (ERROR, FAILED, FINISHED, NOT_STARTED, POSTPROCESS_FAILED, QUEUED, RUNNING, START_FAILED,
                          TERMINAL)
from tasks.outcome import Outcome, Step

# After a row was handed back (rate limit, job limit), wait this long before trying it again.
RETRY_HOLD_SECONDS = 5.0
# While the run stops, a cycle's status changes are told grouped, naming this many rows per kind.
GROUPED_ROWS_NAMED = 10


class OutcomeBook:
    """The cycle's book of outcomes: `apply` writes them to the store; the cycle reads `holds`,
    `refused`, `streaks` and `metadata` to decide and dispatch, and `worked`/`still_failed()` to end."""

    def __init__(
        self,
        store: CampaignStore,
        polls: PollClock,
        logger: logging.Logger,
        pinned: Set[int],  # the cycle's set of rows whose backend the user chose (it grows as rows are seen)
        max_consecutive_failures: int,
        on_change: Callable[[int, str, str], None],
        on_downloaded: Callable[[Dict[int, Mapping[str, Any]]], None],
        stopping: Callable[[], bool] = lambda: False,  # the run is stopping: status lines grouped
    ):
        self.store = store
        self.polls = polls
        self.logger = logger
        self.pinned = pinned
        self.on_change = on_change
        self.on_downloaded = on_downloaded  # STAC item summaries, once stored
        self.stopping = stopping
        self.holds: Dict[int, float] = {}  # row -> monotonic time before which it is not tried again
        self.metadata: Dict[int, Mapping[str, Any]] = {}  # ended jobs' metadata, until downloaded
        self.refused: Dict[str, str] = {}  # backend -> why it refused new jobs for good
        self.streaks = FailureStreaks(max_consecutive_failures)
        self.worked: Set[int] = set()
        self.failed: Set[int] = set()
        self._errors_untold: Dict[int, str] = {}  # row -> status before `error`, until its logs are in
        self._pending: Dict[int, Dict[str, Any]] = {}  # updates of the outcomes being applied (row_now reads them)
        self._finish_resubmits: Dict[int, int] = {}  # row -> crashed download/log tasks made again

    def row_now(self, row: int) -> RowNow:
        pending = self._pending.get(row, {})
        status = pending.get("status", self.store.value(row, "status"))
        started = pending.get("running_start_time", self.store.value(row, "running_start_time"))
        return RowNow(status, started, row in self.pinned, self._finish_resubmits.get(row, 0))

    def still_failed(self) -> Set[int]:
        """The rows this run saw fail (status or hook) that still are failed in the store."""
        return {row for row in self.failed if self.store.value(row, "status") in FAILED
                or self.store.value(row, "postprocess_status") == POSTPROCESS_FAILED}

    def apply(self, outcomes: List[Outcome]) -> None:
        """Apply what the tasks reported: all of a cycle's updates in one store update (10k-row
        runs: one per outcome was thousands of DataFrame writes), later outcomes seeing earlier ones."""
        now = time.monotonic()
        self.holds = {row: until for row, until in self.holds.items() if until > now}
        self._pending = {}
        changes: List[tuple] = []
        downloaded: Dict[int, Mapping[str, Any]] = {}
        for outcome in outcomes:
            if outcome.step is Step.POLL:
                self.polls.poll_answered(outcome.backend, now)
            effects = effects_of(outcome, self.row_now)
            downloaded.update(effects.items)
            for row, update in effects.updates.items():
                self._pending.setdefault(row, {}).update(update)
            for row in effects.hold:
                self.holds[row] = now + RETRY_HOLD_SECONDS
            self.metadata.update(effects.metadata)
            for row in effects.resubmitted:
                self._finish_resubmits[row] = self._finish_resubmits.get(row, 0) + 1
            if outcome.step in (Step.DOWNLOAD, Step.ERROR_LOGS):
                for row in set(outcome.rows) - effects.resubmitted:  # a resubmitted download still needs them
                    self.metadata.pop(row, None)
            for message in effects.warnings:
                self.logger.warning(message)
            if effects.refused and outcome.backend not in self.refused:
                self.refused[outcome.backend] = effects.refused
                self.logger.warning("backend %s refused new jobs for good (%s): starting no more jobs there in "
                                    "this run; running jobs are still followed and downloaded",
                                    outcome.backend, effects.refused)
            for kind, error in effects.attempts:
                halted = self.streaks.record(outcome.backend, kind, error)
                if halted:
                    self.logger.warning(
                        "backend %s: %s; starting no more jobs there in this run (running jobs are still followed). "
                        "Fix the cause, then run again: add --retry-failed (retry_failed=True) to retry the failed "
                        "rows; the rows not tried stay not_started", outcome.backend, halted)
            for row, update in effects.updates.items():
                if update.get("postprocess_status"):
                    self.worked.add(row)
                    if update["postprocess_status"] == POSTPROCESS_FAILED:
                        self.failed.add(row)
            for row, _old, new in effects.changes:
                fact = outcome.rows.get(row) or {}
                if fact.get("created_at") and outcome.step in (Step.CREATE, Step.START):
                    self.polls.job_created(row, fact["created_at"])
                if new in (QUEUED, RUNNING) and outcome.step in (Step.CREATE, Step.START):
                    self.polls.job_started(row, now, fact.get("started_at"))
                elif new == RUNNING and outcome.step is Step.POLL:
                    self.polls.job_running(outcome.backend, row, now, fact.get("times"))
                elif new in TERMINAL and outcome.step is Step.POLL:
                    self.polls.job_ended(outcome.backend, row, finished=new == FINISHED, now=now,
                                         metadata=fact.get("metadata"))
                if new in TERMINAL:
                    self.worked.add(row)
                if new in FAILED:
                    self.failed.add(row)
            changes.extend((row, old, new, outcome) for row, old, new in effects.changes)
        pending, self._pending = self._pending, {}
        self.store.apply(pending)
        if downloaded:
            self.on_downloaded(downloaded)
        told: List[tuple] = []  # (row, backend, old, new)
        for row, old, new, outcome in changes:  # told once the rows' new values (ids, errors) are stored
            if new == ERROR and outcome.step is Step.POLL:
                self._errors_untold[row] = old  # told with its reason once its error logs are in
            else:
                told.append((row, outcome.backend, old, new))
        for outcome in outcomes:
            if outcome.step is Step.ERROR_LOGS:
                for row in outcome.rows:
                    told.append((row, outcome.backend, self._errors_untold.pop(row, RUNNING), ERROR))
        if told and self.stopping():
            self._tell_grouped(told)
        else:
            for change in told:
                self._tell(*change)

    def _tell(self, row: int, backend: str, old: str, new: str) -> None:
        """One readable line (and event) per status change: `job j-1 (row 3, cdse): running -> error: <reason>`."""
        self.on_change(row, old, new)
        reason = self.store.value(row, "error_message") if new in (START_FAILED, ERROR) else None
        log = self.logger.warning if new in FAILED else self.logger.info
        job_id = self.store.value(row, "id")
        who = f"job {job_id} (row {row}, {backend})" if job_id else f"row {row} ({backend}, no job)"
        log("%s: %s -> %s%s", who, old, new, f": {reason}" if reason else "")

    def _tell_grouped(self, told: List[tuple]) -> None:
        """A stopping run hands hundreds of rows back in its last cycles: a line per row (each a
        Prefect log record too) took seconds of the stop at scale. So one record per level, e.g.
        `12 rows handed back not_started: row 3, row 7, ... (+2 more)`; events stay one per row."""
        by_level: Dict[bool, Dict[str, List[int]]] = {}  # failed? -> kind -> rows
        reasons: Dict[str, str] = {}  # kind -> the first row's reason (failures)
        for row, backend, old, new in told:
            self.on_change(row, old, new)
            kind = "handed back not_started" if new == NOT_STARTED else f"{old} -> {new}"
            by_level.setdefault(new in FAILED, {}).setdefault(kind, []).append(row)
            if new in (START_FAILED, ERROR) and kind not in reasons:
                reasons[kind] = str(self.store.value(row, "error_message") or "")
        for failed, kinds in by_level.items():
            parts = []
            for kind, rows in kinds.items():
                named = ", ".join(f"row {row}" for row in rows[:GROUPED_ROWS_NAMED])
                more = f" (+{len(rows) - GROUPED_ROWS_NAMED} more)" if len(rows) > GROUPED_ROWS_NAMED else ""
                first = f" (first: {reasons[kind]})" if reasons.get(kind) else ""
                parts.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''} {kind}{first}: {named}{more}")
            (self.logger.warning if failed else self.logger.info)("%s", "; ".join(parts))
