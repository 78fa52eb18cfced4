"""The scheduler's Snapshot from the rows a run holds (plain records), and which rows need work.

`needs_work` (python, for a record) and `adoptable_sql` (WHERE clauses, for rows not waiting) are
the same rule: a row needs a run while it is not terminal, or ended with results or error logs, a hook or a
resubmission still to do. A row that needs no work is given back (no owner) after it is written.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from sqlalchemy import and_, func, or_, text

from jobdb.sql.schema import WORK_LEFT, jobs
from jobdb.status import CREATED, CREATING, ERROR, FINISHED, HOLDS_SLOT, NOT_STARTED, POLLED, START_FAILED, TERMINAL
from jobdb.store import FailedRow, PolledJob, Snapshot


@dataclass(frozen=True)
class WorkRules:
    downloads: bool = True
    hooks: bool = False
    max_attempts: int = 1


def needs_work(r: Mapping[str, Any], rules: WorkRules) -> bool:
    status = r.get("status")
    if status not in TERMINAL:
        return True
    has_job = r.get("id") is not None and r.get("backend_name") is not None
    ended = status in (FINISHED, ERROR)
    if has_job and r.get("results_status") is None and (status == ERROR or (status == FINISHED and rules.downloads)):
        return True
    if rules.hooks and ended and has_job and r.get("postprocess_status") is None:
        return True
    return rules.max_attempts > 1 and status in (ERROR, START_FAILED) and (r.get("attempt") or 1) < rules.max_attempts


def adoptable_sql(rules: WorkRules) -> List[Any]:
    """SQL: rows a run may adopt from ended runs — not waiting, and `needs_work` — as the WHERE
    clauses whose OR it is, each claimed by its own statement: each starts with a partial index's
    WHERE (schema.WORK_LEFT), so a claim reads that index in row order, never the campaign (with
    one OR, PostgreSQL walked the primary key through every row: 0.4 s at 100 000 rows)."""
    c = jobs.c
    has_job = and_(c.id.isnot(None), c.backend_name.isnot(None))
    ended = [ERROR, FINISHED] if rules.downloads else [ERROR]
    clauses = [text(WORK_LEFT["in_flight"]),
               and_(text(WORK_LEFT["results_pending"]), has_job, c.status.in_(ended))]
    if rules.hooks:
        clauses.append(and_(text(WORK_LEFT["hook_pending"]), has_job))
    if rules.max_attempts > 1:
        clauses.append(and_(c.status.in_([ERROR, START_FAILED]), func.coalesce(c.attempt, 1) < rules.max_attempts))
    return clauses


# The Snapshot's per-row mappings (row -> entry); "waiting" and "holding" are kept beside them.
PARTS = tuple(f.name for f in fields(Snapshot) if f.name not in ("rows", "counts", "waiting", "holding"))


def row_parts(i: int, r: Mapping[str, Any], track_hooks: bool, track_retries: bool) -> Dict[str, Any]:
    """What one held row puts in the scheduler's Snapshot: part name -> its entry for this row
    ("waiting": True; "holding": the backend whose slot it holds)."""
    parts: Dict[str, Any] = {}
    status, backend, job_id = r.get("status"), r.get("backend_name"), r.get("id")
    results = r.get("results_status")
    has_job = job_id is not None and backend is not None
    if status == NOT_STARTED:
        parts["waiting"] = True
        if backend is not None:
            parts["pinned"] = str(backend)
        if r.get("attempt"):
            parts["attempts"] = int(r["attempt"])
    elif status == CREATING:
        parts["creating"] = (_text(backend), _text(r.get("job_marker")))
    if status == CREATED and has_job:
        parts["to_start"] = (str(backend), str(job_id))
    if status in POLLED and has_job:
        parts["polled"] = PolledJob(str(backend), str(job_id), str(status), _text(r.get("running_start_time")))
    if status in HOLDS_SLOT and backend is not None:
        parts["holding"] = str(backend)
    if has_job and results is None and status == FINISHED:
        parts["to_download"] = (str(backend), str(job_id))
    if has_job and results is None and status == ERROR:
        parts["to_save_logs"] = (str(backend), str(job_id))
    if track_hooks and has_job and status in (FINISHED, ERROR) and r.get("postprocess_status") is None:
        parts["hook_pending"] = (str(backend), str(job_id), str(status), _text(results))
    if track_retries and status in (ERROR, START_FAILED):
        parts["failed"] = FailedRow(status=str(status), attempt=int(r.get("attempt") or (1 if job_id else 0)),
                                    error=r.get("error_message"), previous_error=r.get("previous_error"),
                                    handled=status == START_FAILED or results is not None, job_id=job_id)
    if r.get("previous_job_ids") is not None:
        parts["earlier_jobs"] = str(r["previous_job_ids"])
    return parts


class HeldView:
    """The Snapshot of the rows a run holds, kept row by row: the store says which rows changed
    (`touch`), and a snapshot re-reads only those and rebuilds only the parts they changed, so a
    cycle's Python work follows the rows that changed, not the rows held. Every part comes out in
    row order, as a full rebuild (`snapshot_of`) gives it."""

    def __init__(self) -> None:
        self._entries: Dict[str, Dict[int, Any]] = {name: {} for name in (*PARTS, "waiting", "holding")}
        self._in_order = {name: True for name in self._entries}  # entries' keys ascending (no sort needed)
        self._touched: set = set()
        self._built: Dict[str, Any] = {}
        self._flags: Optional[Tuple[bool, bool]] = None

    def touch(self, i: int) -> None:
        """Row `i` was taken, changed or given back."""
        self._touched.add(int(i))

    @property
    def waiting_count(self) -> int:
        """Held rows waiting to be started, as of the last `refresh`."""
        return len(self._entries["waiting"])

    def refresh(self, records: Mapping[int, Mapping[str, Any]], track_hooks: bool, track_retries: bool) -> None:
        """Re-read the rows touched since the last refresh."""
        if self._flags != (track_hooks, track_retries):  # what a row contributes changed: every row again
            self._flags = (track_hooks, track_retries)
            self._touched.update(records)
            self._touched.update(i for entries in self._entries.values() for i in entries)
        for i in sorted(self._touched):
            for name, entries in self._entries.items():
                if entries.pop(i, None) is not None:
                    self._built.pop(name, None)
            if i in records:
                for name, entry in row_parts(i, records[i], track_hooks, track_retries).items():
                    entries = self._entries[name]
                    if entries and self._in_order[name] and i < next(reversed(entries)):
                        self._in_order[name] = False
                    entries[i] = entry
                    self._built.pop(name, None)
        self._touched.clear()

    def snapshot(self, records: Mapping[int, Mapping[str, Any]], counts: Mapping[str, int], total: int,
                 track_hooks: bool, track_retries: bool) -> Snapshot:
        self.refresh(records, track_hooks, track_retries)
        for name, entries in self._entries.items():
            if name in self._built:
                continue  # no row changed this part: the last snapshot's copy serves (nobody writes to it)
            if not self._in_order[name]:
                self._entries[name] = entries = dict(sorted(entries.items()))
                self._in_order[name] = True
            if name == "waiting":
                self._built[name] = tuple(entries)
            elif name == "holding":
                holding: Dict[str, int] = {}
                for backend in entries.values():
                    holding[backend] = holding.get(backend, 0) + 1
                self._built[name] = holding
            else:
                self._built[name] = dict(entries)
        return Snapshot(rows=total, counts=dict(counts), **self._built)


def snapshot_of(records: Mapping[int, Mapping[str, Any]], counts: Mapping[str, int], total: int,
                track_hooks: bool, track_retries: bool) -> Snapshot:
    """A Snapshot built from scratch (what `HeldView` keeps up to date)."""
    return HeldView().snapshot(records, counts, total, track_hooks, track_retries)


def _text(value: Any):
    return None if value is None else str(value)
