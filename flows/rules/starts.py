"""Starts and creates: which created jobs go into free slots, and how many rows to create. Pure, no I/O.

Two separate steps (a slow create never holds a start worker):
- jobs `created` earlier are started into the free slots of their backend (`parallel_jobs` minus
  the jobs this run has started there minus the slots other live runs hold on the same account);
- waiting rows are created for the free slots no created job fills (created and started by one
  task on a create worker), plus up to `create_ahead` more per backend, created only, ready for
  the next slot that frees (issue 21).

A created job does not count against `parallel_jobs` while it waits within `create_ahead`; with
`create_ahead=0` (backends that count created jobs against a limit) every created job holds a
slot. A row that names a backend waits for it, the others go where most jobs are wanted. Rows
handed back by a task are held for a while. Nothing is created or started while the run is
stopping (a bounded pass whose time is up still starts the jobs it created: nothing new), or on
a backend that refused for good (402), and nothing is created ahead while other live runs share
the account.

The slot arithmetic lives here too: what this run takes on each backend (`occupied`, with jobs
created ahead waiting for free) and what it wants (`slots_wanted`, for the account's fair shares).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Tuple

from flows.rules.plan import BackendPolicy, InFlight, Situation, StartOrder
from jobdb.status import CREATING, QUEUED_FOR_START
from jobdb.store import Snapshot


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
    start task starts it next) holds its slot.

    A `creating` row is ahead only while this run's own create task has it (`posting`, and not a
    start task). One no task of this run has was written by a run that died, or its POST got no
    answer: its job may have been created *and started* (a create for a free slot starts it in the
    same task), so it holds its slot until the lookup by marker adopts or gives it back. Counted
    as ahead, a resume started the killed run's created jobs beside its running ones: 4 active on
    a 2-job account."""
    count: Dict[str, int] = {}
    for row, (backend, _) in snapshot.to_start.items():
        if backend and row not in in_flight.in_start_tasks:
            count[backend] = count.get(backend, 0) + 1
    for row, (backend, _) in snapshot.creating.items():
        if backend and row in in_flight.posting and row not in in_flight.in_start_tasks:
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
