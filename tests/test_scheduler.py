"""The scheduler's decisions and the dispatcher's batching, as pure functions: no Prefect, no HTTP."""
from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from flows.run_loop.dispatcher import batched, finish_batch_size, start_batch_size, take_turns
from flows.rules.plan import BackendPolicy, InFlight, ReconcileOrder, Situation, StartOrder
from flows.rules.scheduler import (
    finishes_held,
    plan_cycle,
    plan_finishes,
    plan_hooks,
    plan_moves_off_refused,
    plan_polls,
    plan_reconciles,
    plan_resubmits,
)
from flows.rules.starts import free_slots, occupied, pipeline, plan_starts
from jobdb.store import FailedRow, PolledJob, Snapshot


def marker(row: int, attempt: int = 1) -> str:
    return f"db-r{row}" if attempt == 1 else f"db-r{row}-a{attempt}"


def situation(**kw) -> Situation:
    base = dict(backends={"a": BackendPolicy(2), "b": BackendPolicy(1)}, now=100.0)
    base.update(kw)
    return Situation(**base)


def test_free_slots_subtract_own_and_other_runs_and_never_go_negative():
    s = situation(others_holding={"a": 1, "b": 3})
    assert free_slots(s, {"a": 0}) == {"a": 1, "b": 0}
    assert free_slots(situation(), {"a": 5}) == {"a": 0, "b": 1}


def test_waiting_rows_spread_over_backends_into_free_slots_only():
    snap = Snapshot(rows=10, waiting=tuple(range(10)))
    intents, orders = plan_starts(snap, situation(), InFlight(), marker)
    assert [o.backend for o in orders].count("a") == 2 and [o.backend for o in orders].count("b") == 1
    assert len(orders) == 3
    for order in orders:
        assert intents[order.row] == {"status": "creating", "backend_name": order.backend,
                                      "job_marker": marker(order.row), "attempt": 1}


def test_pinned_row_waits_for_its_backend_and_does_not_block_others():
    snap = Snapshot(rows=4, waiting=(0, 1, 2, 3), pinned={0: "b", 1: "b"}, holding={"b": 1})
    _, orders = plan_starts(snap, situation(), InFlight(), marker)
    assert {(o.row, o.backend) for o in orders} == {(2, "a"), (3, "a")}


def test_slots_held_by_other_live_runs_are_not_used():
    snap = Snapshot(rows=5, waiting=tuple(range(5)))
    _, orders = plan_starts(snap, situation(others_holding={"a": 2, "b": 1}), InFlight(), marker)
    assert orders == []


def test_rows_held_after_a_hand_back_wait_until_their_hold_ends():
    snap = Snapshot(rows=3, waiting=(0, 1, 2))
    _, orders = plan_starts(snap, situation(holds={0: 105.0, 1: 99.0}), InFlight(), marker)
    assert 0 not in {o.row for o in orders} and {1, 2} <= {o.row for o in orders}
    _, later = plan_starts(snap, situation(now=106.0, holds={0: 105.0}), InFlight(), marker)
    assert 0 in {o.row for o in later}


def test_created_jobs_are_started_first_and_rows_in_flight_are_left_alone():
    snap = Snapshot(rows=4, waiting=(2, 3), to_start={0: ("a", "j0"), 1: ("a", "j1")}, holding={"a": 2})
    intents, orders = plan_starts(snap, situation(), InFlight(starting=frozenset({1})), marker)
    assert intents[0] == {"status": "queued_for_start"} and orders[0].job_id == "j0"
    assert 1 not in intents
    assert {o.row for o in orders[1:]} == {2}  # a is full (2 held): only b's slot is free


def test_nothing_new_starts_while_stopping_or_on_a_backend_that_refused():
    snap = Snapshot(rows=3, waiting=(0, 1, 2), to_start={5: ("a", "j5")})
    assert plan_starts(snap, situation(starting_allowed=False), InFlight(), marker) == ({}, [])
    refused = situation(backends={"a": BackendPolicy(2, accepting=False), "b": BackendPolicy(1)})
    _, orders = plan_starts(snap, refused, InFlight(), marker)
    assert [o.backend for o in orders] == ["b"]


def test_max_parallel_starts_caps_start_tasks_in_flight():
    capped = situation(backends={"a": BackendPolicy(10, max_parallel_starts=3)})
    snap = Snapshot(rows=10, waiting=tuple(range(10)))
    _, orders = plan_starts(snap, capped, InFlight(starts_per_backend={"a": 2}), marker)
    assert len(orders) == 1


def test_polls_only_when_due_one_per_backend_and_cancel_overdue_jobs():
    now = datetime(2024, 1, 1, 12, tzinfo=timezone.utc)
    snap = Snapshot(rows=3, polled={
        0: PolledJob("a", "j0", "running", (now - timedelta(hours=2)).isoformat()),
        1: PolledJob("a", "j1", "running", (now - timedelta(seconds=5)).isoformat()),
        2: PolledJob("b", "j2", "queued", None),
    })
    assert plan_polls(snap, situation(), InFlight()) == []
    due = situation(poll_due=True, cancel_after=60, utc_now=now)
    polls = {p.backend: p for p in plan_polls(snap, due, InFlight(polling=frozenset({"b"})))}
    assert set(polls) == {"a"}
    assert polls["a"].jobs == {0: ("j0", "running"), 1: ("j1", "running")} and polls["a"].cancel == ("j0",)


def test_rows_left_creating_are_looked_up_by_marker_or_given_back():
    snap = Snapshot(rows=3, creating={0: ("a", "db-r0"), 1: (None, None), 2: ("a", "db-r2")})
    orders, updates = plan_reconciles(snap, situation(), InFlight(starting=frozenset({2})))
    assert [(o.backend, dict(o.markers)) for o in orders] == [("a", {"db-r0": 0})]
    assert updates == {1: {"status": "not_started", "job_marker": None}}


def test_a_row_whose_create_may_still_be_under_way_is_given_back_only_after_the_grace():
    """Idle `creating` rows (no answer to their POST, a crashed task, a dead run): looked up at once
    (a job found is adopted), but a row whose job is not found stays `creating` until `create_grace`
    has passed since this run first saw it idle; the cycle wakes then."""
    snap = Snapshot(rows=2, creating={0: ("a", "db-r0"), 1: ("a", "db-r1")})
    grace = {"a": BackendPolicy(2, create_grace=30.0)}
    first = situation(backends=grace, now=100.0, creating_idle_since={0: 100.0, 1: 60.0})
    orders, _ = plan_reconciles(snap, first, InFlight())
    assert [(dict(o.markers), o.unsettled) for o in orders] == [({"db-r0": 0, "db-r1": 1}, frozenset({0}))]
    looked = replace(first, creating_looked_up=frozenset({0, 1}))
    assert plan_reconciles(snap, looked, InFlight())[0] == [ReconcileOrder("a", {"db-r1": 1})]  # row 1 settled
    assert plan_cycle(snap, replace(looked, now=110.0), InFlight(reconciling=frozenset({"a"})), marker
                      ).reconcile_due_at == 130.0
    due = plan_reconciles(snap, replace(looked, now=130.0), InFlight())[0]
    assert due == [ReconcileOrder("a", {"db-r0": 0, "db-r1": 1})]


def test_finished_jobs_are_downloaded_once_and_failed_ones_get_their_logs():
    snap = Snapshot(rows=3, to_download={0: ("a", "j0"), 1: ("a", "j1")}, to_save_logs={2: ("b", "j2")})
    orders = plan_finishes(snap, situation(), InFlight(finishing=frozenset({1})))
    assert [(o.row, o.download) for o in orders] == [(0, True), (2, False)]
    no_download = plan_finishes(snap, situation(download=False), InFlight())
    assert [(o.row, o.download) for o in no_download] == [(2, False)]
    held = plan_finishes(snap, situation(holds={0: 105.0}), InFlight())  # its task crashed: made again later
    assert [o.row for o in held] == [1, 2]
    assert [o.row for o in plan_finishes(snap, situation(holds={0: 99.0}), InFlight())] == [0, 1, 2]
    assert finishes_held(snap, {0: 105.0}) and finishes_held(snap, {2: 105.0})  # the run is not done yet
    assert not finishes_held(snap, {7: 105.0}) and not finishes_held(Snapshot(rows=3), {0: 105.0})


def test_a_whole_cycle_plans_everything_at_once():
    snap = Snapshot(rows=4, waiting=(0,), creating={1: ("a", "db-r1")}, polled={2: PolledJob("b", "j2", "queued", None)},
                    to_download={3: ("a", "j3")}, holding={"a": 1, "b": 1})
    plan = plan_cycle(snap, situation(poll_due=True), InFlight(), marker)
    assert [o.row for o in plan.starts] == [0] and plan.starts[0].backend == "a"
    assert len(plan.polls) == 1 and len(plan.reconciles) == 1 and len(plan.finishes) == 1


def test_batching_thresholds():
    assert start_batch_size(20, workers=5) == 1  # few rows: one task run per row (named after its tile)
    assert start_batch_size(21, workers=5) == 2  # many: small batches, about 4 per worker
    assert start_batch_size(1000, workers=5) == 50
    # 30 rows of one backend, 5 workers: never fewer batches than workers (issue 21: 18-row batches
    # ran 23 s one row after the other while other workers of the pool sat idle)
    assert math.ceil(30 / start_batch_size(30, workers=5)) >= 5
    assert finish_batch_size(8, workers=8) == 1
    assert finish_batch_size(9, workers=8) == 2
    assert finish_batch_size(1000, workers=8) == 25


def test_hooks_run_after_downloads_or_error_logs_and_only_when_configured():
    snap = Snapshot(rows=4, hook_pending={
        0: ("a", "j0", "finished", "downloaded"), 1: ("a", "j1", "finished", None),
        2: ("a", "j2", "error", "logs_saved"), 3: ("a", "j3", "error", None)})
    both = situation(hooks=frozenset({"done", "error"}))
    assert [(o.row, o.kind) for o in plan_hooks(snap, both, InFlight())] == [(0, "done"), (2, "error")]
    assert [o.row for o in plan_hooks(snap, situation(hooks=frozenset({"error"})), InFlight())] == [2]
    assert plan_hooks(snap, both, InFlight(hooking=frozenset({0, 2}))) == []
    no_download = situation(hooks=frozenset({"done"}), download=False)
    assert [o.row for o in plan_hooks(snap, no_download, InFlight())] == [0, 1]


def test_failed_rows_are_resubmitted_until_their_attempts_are_used():
    snap = Snapshot(rows=5, earlier_jobs={1: "j1a"}, failed={
        0: FailedRow("error", 1, "oom", None, True, "j0"),
        1: FailedRow("error", 2, "oom", "oom", True, "j1b"),
        2: FailedRow("error", 1, "oom", None, False, "j2"),  # error logs not saved yet
        3: FailedRow("start_failed", 1, "KeyError: x", "KeyError: x", True),  # same callback error twice
        4: FailedRow("start_failed", 1, "429", None, True),
    })
    updates = plan_resubmits(snap, situation(max_attempts=2), InFlight())
    assert set(updates) == {0, 4}
    assert updates[0]["status"] == "not_started" and updates[0]["id"] is None and updates[0]["job_marker"] is None
    assert updates[0]["previous_job_ids"] == "j0" and updates[0]["attempt"] == 1 and updates[0]["previous_error"] == "oom"
    assert set(plan_resubmits(snap, situation(max_attempts=3), InFlight())) == {0, 1, 4}
    assert plan_resubmits(snap, situation(max_attempts=3), InFlight())[1]["previous_job_ids"] == "j1a,j1b"
    assert plan_resubmits(snap, situation(), InFlight()) == {}  # max_attempts=1: today's behaviour
    waiting_hook = Snapshot(rows=1, failed={0: FailedRow("error", 1, "oom", None, True, "j0")},
                            hook_pending={0: ("a", "j0", "error", "logs_saved")})
    assert plan_resubmits(waiting_hook, situation(max_attempts=2, hooks=frozenset({"error"})), InFlight()) == {}


def test_a_resubmitted_row_gets_a_new_marker_per_attempt():
    snap = Snapshot(rows=1, waiting=(0,), attempts={0: 1})
    intents, orders = plan_starts(snap, situation(), InFlight(), marker)
    assert intents[0]["attempt"] == 2 and orders[0].marker == marker(0, 2) != marker(0)


def test_jobs_stuck_on_a_backend_that_refused_go_back_to_waiting_for_another():
    snap = Snapshot(rows=3, to_start={0: ("a", "j0"), 1: ("a", "j1"), 2: ("b", "j2")}, earlier_jobs={1: "jx"})
    refused_a = situation(backends={"a": BackendPolicy(2, accepting=False), "b": BackendPolicy(1)}, pinned=frozenset({1}))
    updates = plan_moves_off_refused(snap, refused_a, InFlight())
    assert set(updates) == {0}  # row 1 is pinned to a; row 2 is on b, which accepts
    assert updates[0]["status"] == "not_started" and updates[0]["previous_job_ids"] == "j0"
    nobody = situation(backends={"a": BackendPolicy(2, accepting=False)})
    assert plan_moves_off_refused(snap, nobody, InFlight()) == {}  # nowhere to go: they stay


def test_jobs_are_created_ahead_of_free_slots_and_never_more_than_rows_left():
    ahead = situation(backends={"a": BackendPolicy(2, create_ahead=3)})
    # 2 started, 1 created and waiting: no slot is free, 2 more may be created ahead
    snap = Snapshot(rows=10, waiting=tuple(range(3, 10)), to_start={2: ("a", "j2")}, holding={"a": 3})
    intents, orders = plan_starts(snap, ahead, InFlight(), marker)
    assert [o.row for o in orders] == [3, 4] and all(o.creates and not o.then_start for o in orders)
    assert all(intents[o.row]["status"] == "creating" for o in orders)
    # one slot frees: the created job starts at once, and one more is created to stay 3 ahead
    snap = Snapshot(rows=10, waiting=tuple(range(5, 10)), to_start={2: ("a", "j2")},
                    creating={3: ("a", marker(3)), 4: ("a", marker(4))}, holding={"a": 4})
    creating_here = InFlight(starting=frozenset({3, 4}), posting=frozenset({3, 4}))  # this run's create tasks
    intents, orders = plan_starts(snap, ahead, creating_here, marker)
    assert orders[0] == StartOrder(2, "a", None, "j2") and intents[2] == {"status": "queued_for_start"}
    assert [(o.row, o.then_start) for o in orders[1:]] == [(5, False)]
    # one row left: one job created, whatever create_ahead allows
    snap = Snapshot(rows=10, waiting=(9,), holding={"a": 2})
    _, orders = plan_starts(snap, ahead, InFlight(), marker)
    assert [o.row for o in orders] == [9]
    # a free slot and nothing created: created and started in one task, then 3 more ahead
    snap = Snapshot(rows=10, waiting=tuple(range(5, 10)), holding={"a": 1})
    _, orders = plan_starts(snap, ahead, InFlight(), marker)
    assert [(o.row, o.then_start) for o in orders] == [(5, True), (6, False), (7, False), (8, False)]


def test_without_create_ahead_a_created_job_holds_its_slot():
    plain = situation(backends={"a": BackendPolicy(2)})
    snap = Snapshot(rows=5, waiting=(2, 3, 4), to_start={0: ("a", "j0")}, creating={1: ("a", marker(1))},
                    holding={"a": 2})
    intents, orders = plan_starts(snap, plain, InFlight(), marker)
    assert [(o.row, o.creates) for o in orders] == [(0, False)]  # started; nothing created: no slot left


def test_jobs_created_ahead_count_against_other_runs_only_beyond_create_ahead():
    backends = {"a": BackendPolicy(4, create_ahead=2), "b": BackendPolicy(4)}
    # a: 3 started + 3 ready (2 of them free); b: 1 started + 2 ready (none free)
    assert occupied({"a": 6, "b": 3}, {"a": 3, "b": 2}, backends) == {"a": 4, "b": 3}
    snap = Snapshot(rows=6, to_start={0: ("a", "j0")}, creating={1: ("b", "m1"), 2: ("b", None)})
    posting = frozenset({1, 2})  # this run's create tasks have both rows
    assert pipeline(snap, InFlight(posting=posting)) == {"a": 1, "b": 2}
    assert pipeline(snap, InFlight(posting=posting, in_start_tasks=frozenset({1}))) == {"a": 1, "b": 1}  # for its slot


def test_the_rows_a_dead_run_was_creating_hold_their_slots_until_looked_up():
    # rows 1, 2 `creating`, no task of this run on them: the dead run may have created and started
    # their jobs. Counted as created ahead, the 2 jobs created ahead (rows 3, 4) were started too.
    backends = {"a": BackendPolicy(2, create_ahead=2)}
    snap = Snapshot(rows=6, waiting=(0, 5), creating={1: ("a", "m1"), 2: ("a", "m2")},
                    to_start={3: ("a", "j3"), 4: ("a", "j4")}, holding={"a": 4})
    assert pipeline(snap, InFlight()) == {"a": 2}  # only the created jobs wait for free
    intents, orders = plan_starts(snap, situation(backends=backends), InFlight(), marker)
    assert orders == [] and intents == {}  # both slots may be in use: nothing started, nothing created


def test_no_jobs_are_created_ahead_while_another_live_run_shares_the_account():
    shared = situation(backends={"a": BackendPolicy(3, create_ahead=3)}, others_holding={"a": 2})
    _, orders = plan_starts(Snapshot(rows=6, waiting=tuple(range(6))), shared, InFlight(), marker)
    assert [o.row for o in orders] == [0]  # the one slot left, nothing ahead: the next free slot may be theirs


def test_once_the_time_is_up_created_jobs_still_start_and_nothing_is_created():
    time_up = situation(backends={"a": BackendPolicy(2, create_ahead=2)}, creating_allowed=False)
    snap = Snapshot(rows=4, waiting=(2, 3), to_start={0: ("a", "j0"), 1: ("a", "j1")}, holding={"a": 2})
    _, orders = plan_starts(snap, time_up, InFlight(), marker)
    assert [(o.row, o.creates) for o in orders] == [(0, False), (1, False)]


def test_a_creating_row_being_looked_up_stays_idle_and_keeps_its_grace():
    from flows.rules.reconcile import IdleCreating

    idle = IdleCreating()
    idle.update([0, 1], posting=(), now=10.0)
    idle.sent([ReconcileOrder("a", {"db-r0": 0})])
    idle.update([0, 1], posting=(1,), now=12.0)  # row 0 is being looked up, row 1 is in a create task
    assert idle.since == {0: 10.0} and idle.looked_up == {0}
    idle.update([0, 1], posting=(), now=14.0)  # row 0's lookup answered "no job": its grace goes on
    assert idle.since == {0: 10.0, 1: 14.0} and idle.looked_up == {0}


def test_create_and_start_tasks_take_the_backends_in_turn():
    """A pool runs its tasks in submission order: each backend's first rows go before any
    backend's later ones (issue 21: three backends' first jobs no longer wait for another's 30)."""
    queues = {"a": batched(["a0", "a1", "a2"], 1), "b": batched(["b0"], 1), "c": batched(["c0", "c1"], 1)}
    assert [item[0] for _, item in take_turns(queues)] == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert batched(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert take_turns({}) == []


def test_create_workers_follow_the_slots_to_fill_within_the_quotas():
    from types import SimpleNamespace as B

    from flows.run_loop.account_sharing import create_workers
    backends = {"small": B(parallel_jobs=5, max_concurrent_requests=None),
                "wide": B(parallel_jobs=30, max_concurrent_requests=None),
                "stingy": B(parallel_jobs=30, max_concurrent_requests=2)}
    # at least max_start_workers, up to the slots, at most twice max_start_workers; never above the quota
    assert create_workers(backends, 5) == {"small": 5, "wide": 10, "stingy": 2}
