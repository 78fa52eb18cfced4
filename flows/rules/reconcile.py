"""Rows left `creating`: when their job is looked up by marker, and when a row whose job was not
found is given back (to be created again). The one home of that rule; pure, no I/O.

A row is `creating` from its intent (persisted before `POST /jobs`) until its create task answers.
It is left `creating` with no task of this run on it when its `POST /jobs` got no answer
(tasks/start.py: the backend may still create the job), when its task crashed, or when the run that
wrote the intent died (a file job DB resumed, SQL rows adopted after their owner's lease ended).
Each time a POST of it may still be under way on the backend, sent before this run saw the row
idle. So:
- its job is looked up by marker when the row is first seen idle, and adopted if found;
- otherwise it is looked up again once the backend's `create_grace` (tasks/retry_policy.py:
  a few request timeouts) has passed since the row was first seen idle, and only then, if still
  nothing is found, given back (`not_started`: a new create). The cycle wakes for that moment.
The grace is counted on this run's own clock from when it saw the row: no persisted time, no
trust in another machine's clock, and no need to know when the first run sent its POST.
"""
from __future__ import annotations

from typing import Any, Collection, Dict, Iterable, List, Optional, Set, Tuple

from flows.rules.plan import InFlight, ReconcileOrder, Situation
from jobdb.status import NOT_STARTED
from jobdb.store import Snapshot


class IdleCreating:
    """The cycle's memory of the `creating` rows no task of this run works on: since when each is
    idle (monotonic), and which were looked up since then."""

    def __init__(self) -> None:
        self.since: Dict[int, float] = {}
        self.looked_up: Set[int] = set()

    def update(self, creating: Iterable[int], posting: Collection[int], now: float) -> None:
        """`posting`: rows in this run's create or start tasks. A row being looked up by marker is
        still idle: counting it busy restarted its grace at each answer and forgot the lookup, so a
        row whose job never came was looked up every cycle, never given back (a 10k-row run spun on
        21 such rows, ~9 listings a second, and never ended)."""
        idle = [row for row in creating if row not in posting]
        self.since = {row: self.since.get(row, now) for row in idle}
        self.looked_up &= set(idle)

    def sent(self, orders: Iterable[ReconcileOrder]) -> None:
        for order in orders:
            self.looked_up.update(order.markers.values())


def _settles_at(row: int, backend: str, situation: Situation) -> float:
    since = situation.creating_idle_since.get(row, situation.now)
    return since + situation.backends[backend].create_grace


def plan_reconciles(
    snapshot: Snapshot, situation: Situation, in_flight: InFlight
) -> Tuple[List[ReconcileOrder], Dict[int, Dict[str, Any]]]:
    """Rows left `creating`: look their job up by marker (adopted if found; given back if not, once
    settled), or give back at once the rows no job of ours can exist for."""
    orders: Dict[str, Dict[str, int]] = {}
    unsettled: Dict[str, Set[int]] = {}
    updates: Dict[int, Dict[str, Any]] = {}
    for row, (backend, marker) in snapshot.creating.items():
        if row in in_flight.starting:
            continue
        if backend in situation.backends and marker:
            if backend in in_flight.reconciling:
                continue
            settled = situation.now >= _settles_at(row, backend, situation)
            if settled or row not in situation.creating_looked_up:
                orders.setdefault(backend, {})[marker] = row
                if not settled:
                    unsettled.setdefault(backend, set()).add(row)
        else:  # no marker or a backend this run does not know: nothing can have been created by us
            updates[row] = {"status": NOT_STARTED, "job_marker": None}
    return [ReconcileOrder(name, markers, frozenset(unsettled.get(name, ()))) for name, markers in orders.items()], \
        updates


def next_settle_at(snapshot: Snapshot, situation: Situation, in_flight: InFlight) -> Optional[float]:
    """When (monotonic) the next idle `creating` row looked up in vain may be given back: the
    cycle wakes then, whatever its poll interval."""
    times = [_settles_at(row, backend, situation) for row, (backend, marker) in snapshot.creating.items()
             if row not in in_flight.starting and backend in situation.backends and marker
             and row in situation.creating_looked_up]
    later = [t for t in times if t > situation.now]
    return min(later) if later else None
