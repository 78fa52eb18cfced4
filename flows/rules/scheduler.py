"""The pure scheduler: from a snapshot of the job DB and what is in flight, decide what to do next.

No Prefect, no HTTP, no clock of its own: every input is a value, so every decision is
unit-tested in milliseconds (tests/test_scheduler.py). The dispatcher carries the plan out;
what the scheduler reads and returns is in flows/rules/plan.py.

Decisions per cycle:
- starts and creates (flows/rules/starts.py): jobs created earlier are started into the free
  slots of their backend, waiting rows are created for the free slots no created job fills, plus
  up to `create_ahead` more per backend, ready for the next slot that frees.
- intents: the DB updates persisted *before* any task is submitted (status `creating` + a
  marker, or `queued_for_start`), so a crash never loses track of a job being created.
- polls: one per backend with jobs to follow, when a poll is due and the last one returned;
  jobs running longer than `cancel_after` are canceled by that poll.
- reconciles: rows left in `creating` (a POST /jobs without an answer, a crashed task, a dead run)
  are looked up by marker; one whose job is not found is given back only after a grace period
  (flows/rules/reconcile.py).
- finishes: finished jobs whose results are not downloaded, failed jobs whose logs are not saved.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from flows.rules.plan import FinishOrder, HookOrder, InFlight, Plan, PollOrder, ReconcileOrder, Situation
from flows.rules.reconcile import next_settle_at, plan_reconciles
from flows.rules.starts import plan_starts
from jobdb.store import Snapshot
from jobdb.status import FINISHED, HOOK_DONE, HOOK_ERROR, NOT_STARTED, RESULTS_DOWNLOADED, RUNNING, START_FAILED


def plan_polls(snapshot: Snapshot, situation: Situation, in_flight: InFlight) -> List[PollOrder]:
    if not situation.poll_due:
        return []
    by_backend: Dict[str, Dict[int, Tuple[str, str]]] = {}
    cancel: Dict[str, List[str]] = {}
    for row, job in snapshot.polled.items():
        if row in in_flight.starting or job.backend not in situation.backends:
            continue
        by_backend.setdefault(job.backend, {})[row] = (job.job_id, job.status)
        if job.status == RUNNING and overdue(job.running_start_time, situation.cancel_after, situation.utc_now):
            cancel.setdefault(job.backend, []).append(job.job_id)
    wanted = situation.poll_backends
    return [PollOrder(name, jobs, tuple(cancel.get(name, ()))) for name, jobs in by_backend.items()
            if name not in in_flight.polling and (wanted is None or name in wanted)]


def plan_finishes(snapshot: Snapshot, situation: Situation, in_flight: InFlight) -> List[FinishOrder]:
    orders = []
    for rows, download in ((snapshot.to_download, True), (snapshot.to_save_logs, False)):
        if download and not situation.download:
            continue
        for row, (backend, job_id) in rows.items():
            if row not in in_flight.finishing and backend in situation.backends \
                    and situation.holds.get(row, 0.0) <= situation.now:  # a crashed task made again after a hold
                orders.append(FinishOrder(row, backend, job_id, download))
    return orders


def finishes_held(snapshot: Snapshot, holds: Mapping[int, float]) -> bool:
    """Downloads or error logs wait for a retry (their task crashed): the run is not done yet."""
    return any(row in holds for rows in (snapshot.to_download, snapshot.to_save_logs) for row in rows)


def plan_hooks(snapshot: Snapshot, situation: Situation, in_flight: InFlight) -> List[HookOrder]:
    """on_job_done after the results are downloaded (or at once without downloads), on_job_error
    after the error logs are in; a resumed run runs the hooks that did not complete."""
    orders = []
    for row, (backend, job_id, status, results) in snapshot.hook_pending.items():
        kind = HOOK_DONE if status == FINISHED else HOOK_ERROR
        if kind not in situation.hooks or row in in_flight.hooking or backend not in situation.backends:
            continue
        if kind == HOOK_ERROR:
            ready = results is not None  # error logs saved (or given up on)
        else:
            ready = results == RESULTS_DOWNLOADED if situation.download else True
        if ready:
            orders.append(HookOrder(row, backend, job_id, kind))
    return orders


def with_earlier_job(snapshot: Snapshot, row: int, job_id: Optional[str]) -> Optional[str]:
    """The row's previous_job_ids with `job_id` appended (comma-separated)."""
    earlier = [j for j in (snapshot.earlier_jobs.get(row) or "").split(",") if j]
    return ",".join(earlier + ([job_id] if job_id else [])) or None


def plan_moves_off_refused(snapshot: Snapshot, situation: Situation, in_flight: InFlight) -> Dict[int, Dict[str, Any]]:
    """Jobs created on a backend that then refused for good (no credits to start them) are left
    there unstarted (it costs nothing) and their rows go back to waiting, for another backend —
    unless the user pinned them. The abandoned job stays on record in previous_job_ids."""
    accepting = {n for n, p in situation.backends.items() if p.accepting}
    if not accepting or not situation.starting_allowed:
        return {}
    updates: Dict[int, Dict[str, Any]] = {}
    for row, (backend, job_id) in snapshot.to_start.items():
        policy = situation.backends.get(backend)
        if policy is None or policy.accepting or row in situation.pinned or row in in_flight.starting:
            continue
        updates[row] = {"status": NOT_STARTED, "id": None, "job_marker": None, "backend_name": None,
                        "start_time": None, "previous_job_ids": with_earlier_job(snapshot, row, job_id)}
    return updates


RESET_ON_RESUBMIT = ("id", "job_marker", "backend_name", "start_time", "running_start_time", "results_status",
                     "results_error", "postprocess_status", "postprocess_error")


def plan_resubmits(snapshot: Snapshot, situation: Situation, in_flight: InFlight) -> Dict[int, Dict[str, Any]]:
    """Rows that failed with attempts left go back to `not_started` (a new job, a new marker).

    Not before their error logs and error hook are done; and a start that failed twice with the
    same error is not tried again (a broken callback does not heal by retrying).
    """
    if situation.max_attempts <= 1 or not situation.starting_allowed:
        return {}
    updates: Dict[int, Dict[str, Any]] = {}
    for row, failed in snapshot.failed.items():
        if failed.attempt >= situation.max_attempts or not failed.handled or row in in_flight.hooking:
            continue
        if HOOK_ERROR in situation.hooks and row in snapshot.hook_pending:
            continue
        if failed.status == START_FAILED and failed.error is not None and failed.error == failed.previous_error:
            continue
        update: Dict[str, Any] = {column: None for column in RESET_ON_RESUBMIT}
        update.update(status=NOT_STARTED, attempt=failed.attempt, previous_error=failed.error)
        if failed.job_id:
            update["previous_job_ids"] = with_earlier_job(snapshot, row, failed.job_id)
        updates[row] = update
    return updates


def plan_cycle(
    snapshot: Snapshot, situation: Situation, in_flight: InFlight, marker_for: Callable[[int, int], str]
) -> Plan:
    reconciles, updates = plan_reconciles(snapshot, situation, in_flight)
    updates.update(plan_resubmits(snapshot, situation, in_flight))
    updates.update(plan_moves_off_refused(snapshot, situation, in_flight))
    intents, starts = plan_starts(snapshot, situation, in_flight, marker_for)
    return Plan(
        intents=intents,
        starts=tuple(starts),
        polls=tuple(plan_polls(snapshot, situation, in_flight)),
        reconciles=tuple(reconciles),
        finishes=tuple(plan_finishes(snapshot, situation, in_flight)),
        hooks=tuple(plan_hooks(snapshot, situation, in_flight)),
        updates=updates,
        reconcile_due_at=next_settle_at(snapshot, situation, in_flight),
    )


def overdue(running_since: Optional[str], limit_seconds: Optional[float], now: Optional[datetime]) -> bool:
    """True when a job running since `running_since` (RFC3339) has run longer than the limit."""
    if not limit_seconds or not running_since or now is None:
        return False
    try:
        since = datetime.fromisoformat(str(running_since).replace("Z", "+00:00"))
    except ValueError:
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return (now - since).total_seconds() > limit_seconds
