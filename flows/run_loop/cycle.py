"""One flow run's cycle: collect outcomes, apply them, decide (scheduler), persist intents, dispatch.

Prepare sequentially, execute in parallel, bookkeep sequentially: only this loop touches the
store; tasks get plain values and answer with outcomes. The loop never waits on the Prefect API:
outcomes come through an in-process inbox, progress artifacts go out on a background thread.
Applying the outcomes (and remembering holds, refusals, failure streaks) is `applying.OutcomeBook`.

Stopping: when the run is told to stop (Ctrl-C / SIGTERM) or its time is up (`deadline`), it
starts nothing new, tells waiting tasks to give their rows back, waits for in-flight work (at
most `stop_grace_seconds` when interrupted), persists, and returns. Rows left `creating` or
active are picked up by the next run of the same job DB.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional

from tasks.accounts.slots import JobSlots
from flows.run_loop.applying import OutcomeBook
from flows.run_loop.dispatcher import Dispatcher
from flows.run_loop.interrupts import StopSignal
from flows.run_loop.stop_line import StopAnnouncement
from flows.rules.plan import BackendPolicy, Plan, Situation
from flows.rules.reconcile import IdleCreating
from flows.rules.scheduler import finishes_held, plan_cycle
from flows.rules.starts import occupied, pipeline, slots_wanted
from flows.rules.polling import PollClock
from jobdb.status import CREATED
from jobdb.interface import CampaignStore
from jobdb.store import Snapshot
from tasks.outcome import Outcome


@dataclass(frozen=True)
class CycleOptions:
    poll_interval: float
    download: bool = True
    cancel_after: Optional[float] = None
    deadline: Optional[float] = None  # monotonic time after which nothing new starts (bounded pass)
    stop_grace_seconds: float = 1.5  # how long an interrupted run waits for its tasks (the whole stop: <= 3 s)
    hooks: FrozenSet[str] = frozenset()  # configured post-processing hooks: "done", "error"
    max_attempts: int = 1
    max_consecutive_failures: int = 0  # identical failures in a row that stop starts on a backend (0: off)


@dataclass
class CycleEnd:
    reason: str  # "done", "interrupted", "time_up"
    all_started_at: Optional[float]
    refused: Dict[str, str]  # backend -> why it refused new jobs for good
    cycles: int
    halted: Dict[str, str] = field(default_factory=dict)  # backend -> the failure repeated until starts stopped
    worked: FrozenSet[int] = frozenset()  # rows this run brought to an end (a terminal status, a hook run)
    failed: FrozenSet[int] = frozenset()  # of those, the ones that failed (status or hook) and still are


class Cycle:
    def __init__(
        self,
        store: CampaignStore,
        policies: Mapping[str, BackendPolicy],
        dispatcher: Dispatcher,
        options: CycleOptions,
        logger: logging.Logger,
        slots: Optional[JobSlots] = None,
        stop: Optional[StopSignal] = None,
        on_progress: Optional[Callable[[Snapshot], None]] = None,
        on_change: Optional[Callable[[int, str, str], None]] = None,
        on_downloaded: Optional[Callable[[Dict[int, Mapping[str, Any]]], None]] = None,
        limits: Optional[Callable[[Mapping[str, BackendPolicy]], Mapping[str, BackendPolicy]]] = None,
    ):
        self.store = store
        self.policies = dict(policies)
        self.dispatcher = dispatcher
        self.options = options
        self.logger = logger
        self.slots = slots
        self.stop = stop or StopSignal()
        self.on_progress = on_progress or (lambda snapshot: None)
        self.limits = limits or (lambda configured: configured)  # the operator's overrides (flows/config/limits.py)
        self.idle_creating = IdleCreating()  # `creating` rows without a task: the grace before a new create
        self.stop.wakers.append(dispatcher.wake)  # a stop wakes the wait for outcomes at once
        self.pinned = set(store.snapshot().pinned)
        self._ledger_holding: Optional[Dict[str, int]] = None
        self.cycles = 0
        self.polls = PollClock(options.poll_interval, every_interval=options.cancel_after is not None)
        self._stopping = False  # the loop has seen the stop (or its time is up)
        self.book = OutcomeBook(store, self.polls, logger, self.pinned, options.max_consecutive_failures,
                                on_change=on_change or (lambda row, old, new: None),
                                on_downloaded=on_downloaded or (lambda items: None),
                                stopping=lambda: self._stopping or self.stop.event.is_set())
        # An interrupt's `stopping:` line is told, and the tasks told to stop, by a thread of its own
        # at once, not when this loop gets to it (flows/run_loop/stop_line.py)
        self.announcement = StopAnnouncement(self.stop, logger, options.stop_grace_seconds, dispatcher.stop)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> CycleEnd:
        self.announcement.start()
        try:
            return self._run()
        finally:
            self.announcement.close()

    def _run(self) -> CycleEnd:
        t0 = time.monotonic()
        next_progress = 0.0
        all_started_at = None
        stopping_since: Optional[float] = None
        reason = "done"
        timeout = 0.0
        while True:
            self.cycles += 1
            self.apply(self.dispatcher.collect(timeout))
            now = time.monotonic()
            # A Ctrl-C also ends the unbounded wait of a run whose time was up: it counts from the signal.
            interrupted_now = self.stop.event.is_set() and reason != "interrupted"
            if interrupted_now or (stopping_since is None and self._time_up(now)):
                # an interrupt's grace counts from the signal, not from when a long cycle got here
                stopping_since = min(now, self.stop.at or now) if interrupted_now else now
                reason = "interrupted" if interrupted_now else "time_up"
                self._stopping = True
                self.dispatcher.stop()  # (an interrupt's announcement told the tasks already: no harm)
                if reason == "interrupted":  # task runs still waiting for a tag's slot: not waited for
                    self.dispatcher.abandon_waiting()
                else:  # the announcement tells an interrupt's line (at once); time up is the loop's own
                    self.logger.warning("stopping: time is up; starting no new jobs, waiting for the running tasks "
                                        "to end")
            stopping = stopping_since is not None
            snapshot = self.store.snapshot()
            self.pinned.update(snapshot.pinned)  # a SQL store hands out waiting rows a batch at a time
            followed = self._followed(snapshot)
            poll_backends = frozenset() if stopping else self.polls.due(now + self.polls.lead, followed)
            # idle: no POST of this run under way (a row only being looked up stays idle: its grace goes on)
            self.idle_creating.update(snapshot.creating, self.dispatcher.in_flight().posting, now)
            situation = Situation(
                backends={n: replace(p, accepting=p.accepting and n not in self.book.refused
                                     and n not in self.book.streaks.tripped)
                          for n, p in self.limits(self.policies).items()},
                # a bounded pass whose time is up still starts the jobs it created (nothing new)
                now=now, holds=self.book.holds, starting_allowed=not stopping or reason == "time_up",
                creating_allowed=not stopping, poll_due=bool(poll_backends),
                poll_backends=poll_backends,
                download=self.options.download, cancel_after=self.options.cancel_after,
                utc_now=datetime.now(timezone.utc), hooks=self.options.hooks, max_attempts=self.options.max_attempts,
                pinned=frozenset(self.pinned), creating_idle_since=dict(self.idle_creating.since),
                creating_looked_up=frozenset(self.idle_creating.looked_up),
            )
            plan = self.decide(snapshot, situation)
            self.store.apply(plan.updates)
            self.store.apply(plan.intents)
            self.store.persist(force=bool(plan.intents or plan.updates))  # intents before any POST
            if self.store.lost:  # rows another run adopted (this run's lease had lapsed): not ours to start
                plan = replace(plan, starts=tuple(s for s in plan.starts if s.row not in self.store.lost))
            # each poll lists at its time (now, or within the lead: its task waits for it)
            poll_at = {order.backend: max(now, self.polls.next_poll(order.backend, followed.get(order.backend, ())))
                       for order in plan.polls}
            self.dispatch(plan, stopping, poll_at)
            for backend, at in poll_at.items():
                self.polls.poll_sent(backend, at)
            if not stopping and now >= next_progress:
                next_progress = now + self.options.poll_interval
                self.on_progress(snapshot)  # as of this cycle's start: a poll interval is coarser anyway
            if all_started_at is None and not snapshot.waiting and not snapshot.creating:
                all_started_at = now - t0
            if stopping:
                interrupted_long_enough = reason == "interrupted" and now - stopping_since > self.options.stop_grace_seconds
                if not self.dispatcher.busy() or interrupted_long_enough:
                    break
                timeout = 0.1
                continue
            if self._done(plan, snapshot):
                break
            # a backend whose poll is out wakes the loop with its answer (Prefect may start that task
            # run seconds late under load: no spinning on its overdue time meanwhile)
            polling = self.dispatcher.in_flight().polling
            unpolled = {backend: rows for backend, rows in followed.items() if backend not in polling}
            wake = min(next_progress, self.polls.next_wake(unpolled) - self.polls.lead,
                       plan.reconcile_due_at or next_progress)
            timeout = self._wait_time(now, wake)
        self.store.persist(force=True)
        self.on_progress(self.store.snapshot())
        return CycleEnd(reason, all_started_at, dict(self.book.refused), self.cycles, dict(self.book.streaks.tripped),
                        frozenset(self.book.worked), frozenset(self.book.still_failed()))

    def _time_up(self, now: float) -> bool:
        return self.options.deadline is not None and now >= self.options.deadline

    def _done(self, plan: Plan, snapshot: Snapshot) -> bool:
        """Nothing in flight, nothing left to do this cycle, and every row terminal — or waiting
        with no backend left that accepts new jobs (all refused for good: no credits).
        An empty plan changed nothing, so this cycle's snapshot is still the DB's state."""
        if self.dispatcher.busy() or plan.intents or plan.updates or plan.starts or plan.reconciles \
                or plan.finishes or plan.hooks:
            return False
        if finishes_held(snapshot, self.book.holds):
            return False
        if snapshot.all_terminal:
            return True
        stopped = set(self.book.refused) | set(self.book.streaks.tripped)
        if set(self.policies) - stopped:
            return False
        stuck = sum(1 for backend, _ in snapshot.to_start.values() if backend in stopped)  # created, unpaid
        return snapshot.terminal + len(snapshot.waiting) + stuck == snapshot.rows

    def _followed(self, snapshot: Snapshot) -> Dict[str, List[int]]:
        """Per backend, the rows whose started job can change on its own (flows/rules/polling.py);
        not the jobs created ahead, and not the rows a start task still has."""
        busy = self.dispatcher.in_flight().starting
        followed: Dict[str, List[int]] = {}
        for row, job in snapshot.polled.items():
            if job.status != CREATED and row not in busy:
                followed.setdefault(job.backend, []).append(row)
        return followed

    def _wait_time(self, now: float, next_poll: float) -> float:
        wait = next_poll - now
        upcoming = [until - now for until in self.book.holds.values() if until > now]
        if upcoming:
            wait = min(wait, min(upcoming))
        if self.options.deadline is not None:
            wait = min(wait, self.options.deadline - now)
        persist_due = self.store.persist_due_at()  # outcomes (job ids) applied since the last write
        if persist_due is not None:
            wait = min(wait, persist_due - now)
        return max(0.05, wait)

    # --- deciding -------------------------------------------------------------------------
    def decide(self, snapshot: Snapshot, situation: Situation) -> Plan:
        in_flight = self.dispatcher.in_flight()
        marker = self.store.paths.row_marker  # (row, attempt) -> marker
        # The plan as if no other run held a slot: other runs' slots only ever take starts away, so
        # when even this plan starts nothing, the real one is this plan, and the ledger is left alone
        # unless this run's holding changed (jobs ended: the other runs may use the slots).
        alone = plan_cycle(snapshot, replace(situation, others_holding={}), in_flight, marker)
        if self.slots is None or (not alone.starts and self._ledger_holding ==
                                  occupied(snapshot.holding, pipeline(snapshot, in_flight), situation.backends)):
            return alone

        def claim(others: Dict[str, int]):
            shared = any(others.values())
            plan = plan_cycle(snapshot, replace(situation, others_holding=others), in_flight, marker) if shared else alone
            holding, ready = dict(snapshot.holding), pipeline(snapshot, in_flight)
            for order in plan.starts:
                if order.creates:
                    holding[order.backend] = holding.get(order.backend, 0) + 1
                if order.creates != order.then_start:  # created ahead: one more ready; a ready one started: one less
                    ready[order.backend] = ready.get(order.backend, 0) + (1 if order.creates else -1)
            taken = occupied(holding, ready, situation.backends)
            return (plan, taken), taken

        plan, self._ledger_holding = self.slots.claim(claim, wants=slots_wanted(snapshot, situation))
        for line in self.slots.waiting_notices():
            self.logger.info("%s", line)
        return plan

    def dispatch(self, plan: Plan, stopping: bool, poll_at: Optional[Mapping[str, float]] = None) -> None:
        """Starts into free slots first, jobs created ahead last: each submission costs this
        thread a Prefect call, and a freed slot's start is on the campaign's critical path."""
        self.dispatcher.submit_starts(tuple(order for order in plan.starts if not order.ahead))
        if not stopping:
            for order in plan.reconciles:
                self.dispatcher.submit_reconcile(order)
            self.idle_creating.sent(plan.reconciles)
            for order in plan.polls:
                at = (poll_at or {}).get(order.backend, 0.0)
                now = time.monotonic()
                self.dispatcher.submit_poll(order, not_before=at + self.polls.wall_offset if at > now else None)
            self.dispatcher.submit_finishes(plan.finishes, self.book.metadata)
            self.dispatcher.submit_hooks(plan.hooks)
        self.dispatcher.submit_starts(tuple(order for order in plan.starts if order.ahead))

    def apply(self, outcomes: List[Outcome]) -> None:
        self.book.apply(outcomes)  # flows/run_loop/applying.py
