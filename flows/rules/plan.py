"""What the pure scheduler (flows/rules/scheduler.py) reads and what it returns: plain frozen values.

In: the snapshot of the job DB (jobdb/store.py), a `Situation` (per-backend `BackendPolicy`, holds,
clocks, the run's switches) and `InFlight` (work submitted and not answered yet). Out: a `Plan`,
the intents to persist before anything is submitted and the orders the dispatcher
(flows/run_loop/dispatcher.py) carries out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, FrozenSet, Mapping, Optional, Tuple

from tasks.retry_policy import RUN, unanswered_create_grace


@dataclass(frozen=True)
class BackendPolicy:
    parallel_jobs: int
    max_parallel_starts: Optional[int] = None  # start tasks of this backend in flight at once
    accepting: bool = True  # False once the account refused for good (no credits)
    create_ahead: int = 0  # jobs kept created, not started, ready for the next free slot
    # seconds before a `creating` row whose job was not found is created again (flows/rules/reconcile.py)
    create_grace: float = unanswered_create_grace(RUN.timeout)


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
    # rows in create or start tasks: a POST of theirs may be under way (unlike rows only looked up)
    posting: FrozenSet[int] = frozenset()


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
    # `creating` rows no task of this run works on: since when (monotonic), and those looked up since
    creating_idle_since: Mapping[int, float] = field(default_factory=dict)
    creating_looked_up: FrozenSet[int] = frozenset()


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

    @property
    def ahead(self) -> bool:
        """A job created ahead of a free slot: it waits, so its create goes after every start."""
        return self.creates and not self.then_start


@dataclass(frozen=True)
class PollOrder:
    backend: str
    jobs: Mapping[int, Tuple[str, str]]  # row -> (job id, status we know)
    cancel: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ReconcileOrder:
    backend: str
    markers: Mapping[str, int]  # marker -> row
    # rows whose grace has not passed: a job not found may still come, so they stay `creating`
    unsettled: FrozenSet[int] = frozenset()


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
    reconcile_due_at: Optional[float] = None  # when (monotonic) a `creating` row may be given back next
