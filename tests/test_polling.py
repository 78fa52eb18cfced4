"""When polls earn their request (flows/rules/polling.py), as a pure clock: times are plain numbers."""
from __future__ import annotations

import math

from flows.rules.polling import WAVE_GAP_SHARE, PollClock


def test_freshly_started_jobs_earn_no_poll_until_an_interval_has_passed():
    clock = PollClock(interval=10.0)
    clock.job_started(0, now=100.0)
    clock.job_started(1, now=102.0)
    followed = {"a": [0, 1]}
    assert clock.due(105.0, followed) == frozenset()
    assert clock.next_wake(followed) == 110.0 and clock.due(110.0, followed) == {"a"}


def test_after_a_job_finished_polls_wait_for_the_expected_end_then_follow_the_interval():
    clock = PollClock(interval=10.0)
    clock.job_started(0, now=0.0)
    clock.poll_sent("a", 60.0)
    clock.job_ended("a", 0, finished=True)  # seen finished by the poll sent at 60: took at most 60 s
    assert clock.estimate == 60.0
    clock.job_started(1, now=100.0)
    clock.job_started(2, now=101.0)
    followed = {"a": [1, 2]}
    assert clock.due(150.0, followed) == frozenset()  # every active job is fresh: nothing to see yet
    assert clock.next_poll("a", [1, 2]) == 160.0 and clock.due(160.0, followed) == {"a"}
    clock.poll_sent("a", 160.0)
    # the wave's second job: not before a quarter interval after the last poll
    assert clock.next_poll("a", [1, 2]) == 160.0 + WAVE_GAP_SHARE * 10.0
    clock.poll_sent("a", 162.5)
    assert clock.next_poll("a", [1, 2]) == 172.5  # both overdue now: every interval until seen ending


def test_jobs_this_run_did_not_start_and_cancel_after_keep_the_interval():
    clock = PollClock(interval=10.0)
    assert clock.next_poll("a", [7]) == 0.0  # an earlier run's job: poll at once, then every interval
    clock.poll_sent("a", 50.0)
    assert clock.next_poll("a", [7]) == 60.0
    strict = PollClock(interval=10.0, every_interval=True)
    strict.job_started(0, now=100.0)
    strict.poll_sent("a", 100.0)
    assert strict.next_poll("a", [0]) == 110.0


def test_a_backend_with_only_jobs_created_ahead_is_never_polled():
    clock = PollClock(interval=10.0)
    assert clock.due(1e9, {}) == frozenset() and clock.next_wake({}) == math.inf
    assert clock.next_poll("a", []) == math.inf


def test_errors_do_not_shorten_the_estimate():
    clock = PollClock(interval=10.0)
    clock.job_started(0, now=0.0)
    clock.poll_sent("a", 5.0)
    clock.job_ended("a", 0, finished=False)
    assert clock.estimate is None and 0 not in clock.started
