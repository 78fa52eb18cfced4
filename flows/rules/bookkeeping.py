"""Pure rules turning what a task reported (an `Outcome`) into job DB updates; no I/O, no Prefect.

The flow applies the returned `Effects`: updates go to the store, held rows wait before another
try, a refusal for good stops starts on that backend, status changes become log lines and events.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from jobdb.schema import utc_now
from jobdb.status import (
    ADOPTABLE, BACKEND_STATUSES, CREATED, CREATING, FINISHED, NOT_STARTED, POLLED, POSTPROCESS_DONE,
    POSTPROCESS_FAILED, QUEUED, RESULTS_DOWNLOADED, RESULTS_FAILED, RESULTS_LOGS_SAVED, RUNNING, STARTING,
    START_FAILED,
)
from tasks.outcome import Outcome, Step
from tasks.retry_policy import FINISH_TASK_RESUBMITS

USAGE_FIELDS = ("cpu", "memory", "duration", "network", "disk")


@dataclass
class Effects:
    updates: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    hold: Set[int] = field(default_factory=set)  # rows handed back: wait before trying again
    refused: Optional[str] = None  # the backend refused for good (e.g. no credits left)
    changes: List[Tuple[int, str, str]] = field(default_factory=list)  # (row, old, new status)
    warnings: List[str] = field(default_factory=list)
    metadata: Dict[int, Mapping[str, Any]] = field(default_factory=dict)  # job metadata of ended jobs
    # ("start" | "job", error or None for a success), in order: what FailureStreaks counts
    attempts: List[Tuple[str, Optional[str]]] = field(default_factory=list)
    items: Dict[int, Mapping[str, Any]] = field(default_factory=dict)  # STAC item summaries of downloaded jobs
    resubmitted: Set[int] = field(default_factory=set)  # rows whose crashed download/log task is made again


@dataclass(frozen=True)
class RowNow:
    """What the DB says of a row now (the outcome may be older than the row's last change)."""

    status: str
    running_start_time: Optional[str] = None
    pinned: bool = False  # the user chose its backend
    finish_resubmits: int = 0  # times this run made a crashed download/error-log task of the row again


def _present(value: Any) -> bool:
    return value is not None and value == value and value != ""  # NaN != NaN


def format_usage(metadata: Mapping[str, Any]) -> Dict[str, Any]:
    """openeo's usage columns: `"1234 cpu-seconds"` strings, plus `costs` as a float."""
    fields: Dict[str, Any] = {}
    usage = metadata.get("usage") or {}
    if isinstance(usage, Mapping):
        for key in USAGE_FIELDS:
            entry = usage.get(key)
            if isinstance(entry, Mapping):
                fields[key] = f"{entry.get('value', 0)} {entry.get('unit', '')}".strip()
    costs = metadata.get("costs")
    if isinstance(costs, (int, float)):
        fields["costs"] = float(costs)
    return fields


def status_change(row: RowNow, new_status: str, metadata: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The DB fields a polled status change writes (openeo's manager fills the same columns)."""
    update: Dict[str, Any] = {"status": new_status}
    if new_status == RUNNING and not _present(row.running_start_time):
        update["running_start_time"] = utc_now()
    if metadata:
        update.update(format_usage(metadata))
    return update


def _given_back(row: int, pinned: bool) -> Dict[str, Any]:
    """A row whose job was never created goes back to waiting (to any backend unless pinned)."""
    update: Dict[str, Any] = {"status": NOT_STARTED, "job_marker": None, "id": None}
    if not pinned:
        update["backend_name"] = None
    return update


def effects_of(outcome: Outcome, now: Callable[[int], RowNow]) -> Effects:
    handler = {
        Step.CREATE: _start, Step.START: _start, Step.POLL: _poll, Step.RECONCILE: _reconcile,
        Step.DOWNLOAD: _download, Step.ERROR_LOGS: _error_logs, Step.HOOK: _hook,
    }[outcome.step]
    effects = Effects()
    if outcome.crashed:
        effects.warnings.append(f"{outcome.step.value} task on {outcome.backend} failed: {outcome.crashed}")
    handler(outcome, now, effects)
    return effects


def _start(outcome: Outcome, now: Callable[[int], RowNow], effects: Effects) -> None:
    for row, fact in outcome.rows.items():
        current = now(row)
        if current.status not in STARTING:
            effects.warnings.append(f"start of row {row} answered after the row became {current.status}; ignored")
            continue
        if "crashed" in fact:  # the row stays `creating`: the scheduler looks its job up by marker
            effects.warnings.append(f"start of row {row} crashed ({fact['crashed']}); looking for its job")
            continue
        if "unanswered" in fact:  # stays `creating`: looked up by marker, created again only after a grace
            effects.warnings.append(f"row {row}: POST /jobs got no answer ({fact['unanswered']}); the backend may "
                                    "still create its job: looking for it by marker before creating another")
            continue
        if fact.get("refused"):
            effects.refused = str(fact["refused"])
        if fact.get("handed_back"):
            effects.hold.add(row)
            # a row whose job exists (`queued_for_start`) keeps it: handed back, it is `created` again
            update = _given_back(row, current.pinned) if fact["status"] == NOT_STARTED and current.status == CREATING \
                else {"status": CREATED, **({"id": fact["id"]} if fact.get("id") else {})}
        else:
            update = {k: v for k, v in fact.items() if k in ("status", "id", "start_time", "error_message")}
        effects.updates[row] = update
        if update["status"] == START_FAILED:
            effects.attempts.append(("start", str(update.get("error_message") or "start failed")))
        elif update["status"] in (QUEUED, RUNNING, FINISHED) or (update["status"] == CREATED
                                                                      and not fact.get("handed_back")):
            effects.attempts.append(("start", None))
        if update["status"] != current.status:
            effects.changes.append((row, current.status, update["status"]))


def _poll(outcome: Outcome, now: Callable[[int], RowNow], effects: Effects) -> None:
    for row, fact in outcome.rows.items():
        current = now(row)
        if current.status not in POLLED:
            continue  # changed meanwhile (e.g. a start task returned)
        if fact.get("status") not in BACKEND_STATUSES:
            effects.warnings.append(f"row {row}: the backend reported status {fact.get('status')!r}, "
                                    "not an openEO job status; asking again at the next poll")
            continue
        update = status_change(current, fact["status"], fact.get("metadata"))
        if fact.get("error"):
            update["error_message"] = fact["error"]
        effects.updates[row] = update
        if fact.get("metadata"):
            effects.metadata[row] = fact["metadata"]
        if update["status"] == FINISHED and current.status != FINISHED:
            effects.attempts.append(("job", None))
        if update["status"] != current.status:
            effects.changes.append((row, current.status, update["status"]))


def _reconcile(outcome: Outcome, now: Callable[[int], RowNow], effects: Effects) -> None:
    for row, fact in outcome.rows.items():
        current = now(row)
        if current.status != CREATING:
            continue
        job = fact.get("job")
        if job is None and fact.get("may_still_come"):
            continue  # a POST of it may still be under way: stays `creating` (flows/rules/reconcile.py)
        if job is None:
            effects.updates[row] = _given_back(row, current.pinned)
            effects.changes.append((row, CREATING, NOT_STARTED))
            continue
        # A job that ended meanwhile is taken up as `queued`: the next poll sees it end and records
        # its usage and downloads its results (or saves its error logs), as for any other job.
        status = job.get("status") if job.get("status") in ADOPTABLE else QUEUED
        effects.updates[row] = {"status": status, "id": job["id"]}
        effects.changes.append((row, CREATING, status))


def _unless_resubmitted(row: int, what: str, fact: Mapping[str, Any], now: Callable[[int], RowNow],
                       effects: Effects) -> Optional[Mapping[str, Any]]:
    """A download/error-log task that ended without answering (Prefect crashed it): the results are
    still on the backend and the step is safe to repeat, so it is made again after a hold (None: skip
    the row now), a few times; after that the crash counts as the step's error."""
    if "crashed" not in fact:
        return fact
    if now(row).finish_resubmits < FINISH_TASK_RESUBMITS:
        effects.hold.add(row)
        effects.resubmitted.add(row)
        effects.warnings.append(f"row {row}: the {what} task ended without an answer ({fact['crashed']}); "
                                "trying again shortly")
        return None
    return {"error": fact["crashed"]}


def _download(outcome: Outcome, now: Callable[[int], RowNow], effects: Effects) -> None:
    for row, fact in outcome.rows.items():
        fact = _unless_resubmitted(row, "download", fact, now, effects)
        if fact is None:
            continue
        if fact.get("error"):
            effects.warnings.append(f"row {row}: results could not be downloaded: {fact['error']}")
            effects.updates[row] = {"results_status": RESULTS_FAILED, "results_error": fact["error"]}
        else:
            effects.updates[row] = {"results_status": RESULTS_DOWNLOADED, "results_error": None}
            if fact.get("item"):
                effects.items[row] = fact["item"]


def _error_logs(outcome: Outcome, now: Callable[[int], RowNow], effects: Effects) -> None:
    for row, fact in outcome.rows.items():
        fact = _unless_resubmitted(row, "error-log", fact, now, effects)
        if fact is None:
            continue
        if fact.get("error"):
            effects.warnings.append(f"row {row}: error logs could not be saved: {fact['error']}")
            effects.updates[row] = {"results_status": RESULTS_FAILED, "results_error": fact["error"]}
        else:
            update: Dict[str, Any] = {"results_status": RESULTS_LOGS_SAVED}
            if fact.get("error_message"):
                update["error_message"] = fact["error_message"]
            effects.updates[row] = update
        effects.attempts.append(("job", str(fact.get("error_message") or "the job ended in error (no error logs)")))


def _hook(outcome: Outcome, now: Callable[[int], RowNow], effects: Effects) -> None:
    for row, fact in outcome.rows.items():
        if fact.get("error"):
            effects.warnings.append(f"row {row}: post-processing hook failed: {fact['error']}")
            effects.updates[row] = {"postprocess_status": POSTPROCESS_FAILED, "postprocess_error": fact["error"]}
        else:
            effects.updates[row] = {"postprocess_status": POSTPROCESS_DONE, "postprocess_error": None}


def error_signature(error: str) -> str:
    """What makes two errors "the same": the text with ids and numbers blanked (job j-1a2b and
    job j-9f8e failing with the same cause are the same error)."""
    return re.sub(r"\b[\w-]*\d[\w-]*\b", "#", error).strip()[:300]


class FailureStreaks:
    """Consecutive identical failures per backend and kind ("start", "job"): after `limit` in a
    row, that backend should start nothing more (a broken callback or a systematic backend error
    burns credits on every row otherwise). A success of the same kind, or another error, resets
    the streak. `limit` 0: never trips."""

    def __init__(self, limit: int):
        self.limit = limit
        self._streaks: Dict[Tuple[str, str], Tuple[str, int, str]] = {}  # -> (signature, count, an example)
        self.tripped: Dict[str, str] = {}  # backend -> why

    def record(self, backend: str, kind: str, error: Optional[str]) -> Optional[str]:
        """Count one attempt; returns why the backend should stop, the first time it trips."""
        if self.limit <= 0 or backend in self.tripped:
            return None
        if error is None:
            self._streaks.pop((backend, kind), None)
            return None
        signature = error_signature(error)
        previous, count, _ = self._streaks.get((backend, kind), (None, 0, ""))
        count = count + 1 if previous == signature else 1
        self._streaks[(backend, kind)] = (signature, count, error)
        if count < self.limit:
            return None
        what = "starts" if kind == "start" else "jobs"
        self.tripped[backend] = f"{count} {what} in a row failed with the same error: {error}"
        return self.tripped[backend]
