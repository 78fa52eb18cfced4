"""The scheduler's Snapshot from the rows a run holds (plain records), and which rows need work.

`needs_work` (python, for a record) and `needs_work_sql` (a WHERE clause) are the same rule: a
row needs a run while it is not terminal, or ended with results or error logs, a hook or a
resubmission still to do. A row that needs no work is given back (no owner) after it is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping

from sqlalchemy import and_, func, or_

from jobdb.sql.schema import jobs
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


def needs_work_sql(rules: WorkRules):
    c = jobs.c
    has_job = and_(c.id.isnot(None), c.backend_name.isnot(None))
    ended = [ERROR, FINISHED] if rules.downloads else [ERROR]
    clauses = [c.status.notin_(sorted(TERMINAL)),
               and_(has_job, c.results_status.is_(None), c.status.in_(ended))]
    if rules.hooks:
        clauses.append(and_(has_job, c.status.in_([FINISHED, ERROR]), c.postprocess_status.is_(None)))
    if rules.max_attempts > 1:
        clauses.append(and_(c.status.in_([ERROR, START_FAILED]), func.coalesce(c.attempt, 1) < rules.max_attempts))
    return or_(*clauses)


def snapshot_of(records: Mapping[int, Mapping[str, Any]], counts: Mapping[str, int], total: int,
                track_hooks: bool, track_retries: bool) -> Snapshot:
    waiting, pinned, creating, to_start, polled = [], {}, {}, {}, {}
    holding: Dict[str, int] = {}
    to_download, to_save_logs, hook_pending, failed, attempts, earlier = {}, {}, {}, {}, {}, {}
    for i in sorted(records):
        r = records[i]
        status, backend, job_id = r.get("status"), r.get("backend_name"), r.get("id")
        results = r.get("results_status")
        has_job = job_id is not None and backend is not None
        if status == NOT_STARTED:
            waiting.append(i)
            if backend is not None:
                pinned[i] = str(backend)
            if r.get("attempt"):
                attempts[i] = int(r["attempt"])
        elif status == CREATING:
            creating[i] = (_text(backend), _text(r.get("job_marker")))
        if status == CREATED and has_job:
            to_start[i] = (str(backend), str(job_id))
        if status in POLLED and has_job:
            polled[i] = PolledJob(str(backend), str(job_id), str(status), _text(r.get("running_start_time")))
        if status in HOLDS_SLOT and backend is not None:
            holding[str(backend)] = holding.get(str(backend), 0) + 1
        if has_job and results is None and status == FINISHED:
            to_download[i] = (str(backend), str(job_id))
        if has_job and results is None and status == ERROR:
            to_save_logs[i] = (str(backend), str(job_id))
        if track_hooks and has_job and status in (FINISHED, ERROR) and r.get("postprocess_status") is None:
            hook_pending[i] = (str(backend), str(job_id), str(status), _text(results))
        if track_retries and status in (ERROR, START_FAILED):
            failed[i] = FailedRow(status=str(status), attempt=int(r.get("attempt") or (1 if job_id else 0)),
                                  error=r.get("error_message"), previous_error=r.get("previous_error"),
                                  handled=status == START_FAILED or results is not None, job_id=job_id)
        if r.get("previous_job_ids") is not None:
            earlier[i] = str(r["previous_job_ids"])
    return Snapshot(rows=total, waiting=tuple(waiting), pinned=pinned, creating=creating, to_start=to_start,
                    polled=polled, holding=holding, to_download=to_download, to_save_logs=to_save_logs,
                    counts=dict(counts), hook_pending=hook_pending, failed=failed, attempts=attempts,
                    earlier_jobs=earlier)


def _text(value: Any):
    return None if value is None else str(value)
