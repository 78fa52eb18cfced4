"""The pure scheduler: from a snapshot of the job DB and what is in flight, decide what to do next.

No Prefect, no HTTP, no clock of its own: every input is a value, so every decision is
unit-tested in milliseconds (tests/test_scheduler.py). The dispatcher carries the plan out.

Decisions per cycle:
- starts and creates, separate steps (a slow create never holds a start worker): jobs
  `created` earlier are started into the free slots of their backend (`parallel_jobs` minus the
  jobs this run has started there minus the slots other live runs hold on the same account);
  waiting rows are created for the free slots no created job fills (created and started by one
  task on a create worker), plus up to `create_ahead` more per backend, created only, ready for
  the next slot that frees (issue 21). A created job does not count
  against `parallel_jobs` while it waits within `create_ahead`; with `create_ahead=0` (backends
  that count created jobs against a limit) every created job holds a slot, as before. A row that
  names a backend waits for it, the others go where most jobs are wanted. Rows handed back by a
  task are held for a while. Nothing is created or started while the run is stopping (a bounded
  pass whose time is up still starts the jobs it created: nothing new), or on a backend that
  refused for good (402), and nothing is created ahead while other live runs share the account.
- intents: the DB updates persisted *before* any task is submitted (status `creating` + a
  marker, or `queued_for_start`), so a crash never loses track of a job being created.
- polls: one per backend with jobs to follow, when a poll is due and the last one returned;
  jobs running longer than `cancel_after` are canceled by that poll.
- reconciles: rows left in `creating` (a crash, a crashed task) are looked up by marker.
- finishes: finished jobs whose results are not downloaded, failed jobs whose logs are not saved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from jobdb.store import Snapshot
from jobdb.status import (
    CREATING, FINISHED, HOOK_DONE, HOOK_ERROR, NOT_STARTED, QUEUED_FOR_START, RESULTS_DOWNLOADED, RUNNING,
    START_FAILED,
)


@dataclass(frozen=True)
class BackendPolicy:
    parallel_jobs: int
    max_parallel_starts: Optional[int] = None  # start tasks of this backend in flight at once
    accepting: bool = True  # False once the account refused for good (no credits)
    create_ahead: int = 0  # jobs kept created, not started, ready for the next free slot


@dataclass(frozen=True)
class InFlight:
    """Work submitted and not yet answered."""

    starting: FrozenSet[int] = frozenset()  # rows in create or start tasks
    starts_per_backend: Mapping[str, int] = field(default_factory=dict)  # create + start tasks in flight
    polling: FrozenSet[str] = frozenset()  # backends with a poll task out
    reconciling: FrozenSet[str] = frozenset()
    finishing: FrozenSet[int] = frozenset()  # rows in download / error-log tasks
    hooking: FrozenSet[int] = frozenset()  # rows in post-processing hook tasks
    in_start_tasks: FrozenSet[int] = frozenset()  # rows a start task has (created there for a free slot, too)


@dataclass(frozen=True)
class Situation:
    """Everything besides the snapshot that a decision depends on."""

    backends: Mapping[str, BackendPolicy]
    now: float  # monotonic seconds, compared with `holds`
    holds: Mapping[int, float] = field(default_factory=dict)  # row -> not before
    others_holding: Mapping[str, int] = field(default_factory=dict)  # slots other live runs hold
    starting_allowed: bool = True  # False while the run is stopping (Ctrl-C)
    creating_allowed: bool = True  # False once the time is up: jobs created for a slot are still started
    poll_due: bool = False
    poll_backends: Optional[FrozenSet[str]] = None  # the backends worth a poll (flows/rules/polling.py); None: all
    download: bool = True
    cancel_after: Optional[float] = None  # seconds a job may run
    utc_now: Optional[datetime] = None
    pinned: FrozenSet[int] = frozenset()  # rows whose backend the user chose
    hooks: FrozenSet[str] = frozenset()  # "done" / "error": which post-processing hooks are configured
    max_attempts: int = 1  # jobs a row may use (resubmission after error)


@dataclass(frozen=True)
class StartOrder:
    """Create a job for a waiting row (`marker` set), and start it at once if it has a free slot
    (`then_start`; a job created ahead has none yet), or start one created earlier (`job_id` set)."""

    row: int
    backend: str
    marker: Optional[str]  # None for a job created earlier (job_id set)
    job_id: Optional[str] = None
    then_start: bool = True

    @property
    def creates(self) -> bool:
        return self.job_id is None


@dataclass(frozen=True)
class PollOrder:
    backend: str
    jobs: Mapping[int, Tuple[str, str]]  # row -> (job id, status we know)
    cancel: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ReconcileOrder:
    backend: str
    markers: Mapping[str, int]  # marker -> row


@dataclass(frozen=True)
class FinishOrder:
    row: int
    backend: str
    job_id: str
    download: bool  # True: download results; False: save error logs


@dataclass(frozen=True)
class HookOrder:
    row: int
    backend: str
    job_id: str
    kind: str  # "done" or "error"


@dataclass(frozen=True)
class Plan:
    intents: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # persist before submitting
    starts: Tuple[StartOrder, ...] = ()
    polls: Tuple[PollOrder, ...] = ()
    reconciles: Tuple[ReconcileOrder, ...] = ()
    finishes: Tuple[FinishOrder, ...] = ()
    hooks: Tuple[HookOrder, ...] = ()
    updates: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # plain fixes (no task needed)


def free_slots(situation: Situation, holding: Mapping[str, int]) -> Dict[str, int]:
    """Free job slots per backend for this run."""
    return {
        name: max(0, policy.parallel_jobs - int(holding.get(name, 0)) - int(situation.others_holding.get(name, 0)))
        for name, policy in situation.backends.items()
    }


def start_capacity(situation: Situation, in_flight: InFlight) -> Dict[str, int]:
    """How many more create/start tasks each backend may have in flight (None = unbounded -> large)."""
    capacity = {}
    for name, policy in situation.backends.items():
        if not situation.starting_allowed or not policy.accepting or policy.parallel_jobs <= 0:
            capacity[name] = 0  # parallel_jobs 0 (an operator's override): no start at all, not even of created jobs
        elif policy.max_parallel_starts is None:
            capacity[name] = 1 << 30
        else:
            capacity[name] = max(0, policy.max_parallel_starts - int(in_flight.starts_per_backend.get(name, 0)))
    return capacity


def pipeline(snapshot: Snapshot, in_flight: InFlight) -> Dict[str, int]:
    """Per backend, the jobs created (or being created) ahead, not started and not about to be:
    they count in `snapshot.holding` but run nothing yet. A row created for a free slot (its
    start task starts it next) holds its slot."""
    count: Dict[str, int] = {}
    for row, (backend, _) in list(snapshot.to_start.items()) + list(snapshot.creating.items()):
        if backend and row not in in_flight.in_start_tasks:
            count[backend] = count.get(backend, 0) + 1
    return count


def occupied(holding: Mapping[str, int], ready: Mapping[str, int], backends: Mapping[str, BackendPolicy]) -> Dict[str, int]:
    """The slots a run takes on each backend: its started jobs, plus the created (or being created)
    jobs beyond what `create_ahead` lets wait for free (all of them with create_ahead=0)."""
    taken = {}
    for name in set(holding) | set(ready):
        ahead = backends[name].create_ahead if name in backends else 0
        started = int(holding.get(name, 0)) - int(ready.get(name, 0))
        taken[name] = started + max(0, int(ready.get(name, 0)) - ahead)
    return taken


def plan_starts(
    snapshot: Snapshot, situation: Situation, in_flight: InFlight, marker_for: Callable[[int, int], str]
) -> Tuple[Dict[int, Dict[str, Any]], List[StartOrder]]:
    capacity = start_capacity(situation, in_flight)
    busy = in_flight.starting

    def free_to_go(row: int) -> bool:
        return row not in busy and situation.holds.get(row, 0.0) <= situation.now

    ready = pipeline(snapshot, in_flight)
    started = {name: int(n) - ready.get(name, 0) for name, n in snapshot.holding.items()}
    slots = free_slots(situation, started)
    intents: Dict[int, Dict[str, Any]] = {}
    orders: List[StartOrder] = []
    for row, (backend, job_id) in snapshot.to_start.items():  # created earlier: into the free slots first
        if capacity.get(backend, 0) > 0 and slots.get(backend, 0) > 0 and free_to_go(row):
            capacity[backend] -= 1
            slots[backend] -= 1
            ready[backend] -= 1
            intents[row] = {"status": QUEUED_FOR_START}
            orders.append(StartOrder(row, backend, None, job_id))
    # Jobs to create: for the free slots no created job fills (created and started in one task),
    # plus `create_ahead` ready ones (created only) — none ahead while other live runs share the
    # account: its next free slot may be theirs.
    for_slots, ahead = {}, {}
    for name, policy in situation.backends.items():
        waiting_jobs = ready.get(name, 0)  # created ones take the next free slots first
        allowed = 0 if situation.others_holding.get(name) else policy.create_ahead
        for_slots[name] = min(capacity[name], max(0, slots[name] - waiting_jobs))
        ahead[name] = min(capacity[name] - for_slots[name], max(0, allowed - max(0, waiting_jobs - slots[name])))
    wanted = {name: for_slots[name] + ahead[name] for name in for_slots}
    if not situation.creating_allowed or sum(wanted.values()) == 0:
        return intents, orders
    for row in snapshot.waiting:
        if not free_to_go(row):
            continue
        pinned = snapshot.pinned.get(row)
        if pinned is not None:
            backend = pinned if wanted.get(pinned, 0) > 0 else None
        else:
            backend = max(wanted, key=lambda name: wanted[name])
            backend = backend if wanted[backend] > 0 else None
        if backend is None:
            continue
        wanted[backend] -= 1
        attempt = snapshot.attempts.get(row, 0) + 1
        marker = marker_for(row, attempt)
        intents[row] = {"status": CREATING, "backend_name": backend, "job_marker": marker, "attempt": attempt}
        then_start = for_slots[backend] > 0
        for_slots[backend] -= 1 if then_start else 0
        orders.append(StartOrder(row, backend, marker, then_start=then_start))
        if sum(wanted.values()) == 0:
            break
    return intents, orders


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


def plan_reconciles(
    snapshot: Snapshot, situation: Situation, in_flight: InFlight
) -> Tuple[List[ReconcileOrder], Dict[int, Dict[str, Any]]]:
    """Rows left in `creating` by a crash: find their job by marker, or give them back."""
    orders: Dict[str, Dict[str, int]] = {}
    updates: Dict[int, Dict[str, Any]] = {}
    for row, (backend, marker) in snapshot.creating.items():
        if row in in_flight.starting:
            continue
        if backend in situation.backends and marker:
            if backend not in in_flight.reconciling:
                orders.setdefault(backend, {})[marker] = row
        else:  # no marker or a backend this run does not know: nothing can have been created by us
            updates[row] = {"status": NOT_STARTED, "job_marker": None}
    return [ReconcileOrder(name, markers) for name, markers in orders.items()], updates


def plan_finishes(snapshot: Snapshot, situation: Situation, in_flight: InFlight) -> List[FinishOrder]:
    orders = []
    for rows, download in ((snapshot.to_download, True), (snapshot.to_save_logs, False)):
        if download and not situation.download:
            continue
        for row, (backend, job_id) in rows.items():
            if row not in in_flight.finishing and backend in situation.backends:
                orders.append(FinishOrder(row, backend, job_id, download))
    return orders


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


def slots_wanted(snapshot: Snapshot, situation: Situation) -> Dict[str, int]:
    """Per backend, the job slots this run could use now: the rows holding one there, plus the
    waiting rows it could start there (recorded in the account's ledger for fair shares)."""
    anywhere = len(snapshot.waiting) - len(snapshot.pinned)
    wanted = {}
    for name, policy in situation.backends.items():
        waiting = 0
        if situation.starting_allowed and policy.accepting:
            waiting = anywhere + sum(1 for backend in snapshot.pinned.values() if backend == name)
        wanted[name] = int(snapshot.holding.get(name, 0)) + waiting
    return wanted
