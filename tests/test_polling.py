"""When polls earn their request (flows/rules/polling.py), as a pure clock: times are plain numbers."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from flows.rules.polling import EXPECTED_END_MARGIN, WAVE_GAP_SHARE, PollClock


def test_freshly_started_jobs_earn_no_poll_until_an_interval_has_passed():
    clock = PollClock(interval=10.0)
    clock.job_started(0, now=100.0)
    clock.job_started(1, now=104.0)  # beyond a wave gap (2.5 s) of the first: not waited for
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
    # a wave: the second job is expected within a quarter interval of the first: one listing for both
    assert clock.next_poll("a", [1, 2]) == 161.0 and clock.due(160.0, followed) == frozenset()
    assert clock.due(161.0, followed) == {"a"}
    clock.poll_sent("a", 161.0)
    assert clock.next_poll("a", [1, 2]) == 171.0  # both overdue now: every interval until seen ending
    clock.poll_answered("a", 164.0)  # answered late (a loaded machine): the interval counts from the answer
    assert clock.next_poll("a", [1, 2]) == 174.0
    clock.job_started(3, now=162.0)  # a job expected before a quarter interval after the last poll
    clock.poll_sent("a", 221.0)
    assert clock.next_poll("a", [3]) == 221.0 + WAVE_GAP_SHARE * 10.0


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


def backend_time(epoch: float, fraction: bool = True) -> str:
    """An openEO job time as a backend writes it (RFC 3339, UTC)."""
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ")


def clock_with_one_job_seen_ending(metadata_for) -> PollClock:
    """A job created (answered) at 1.0 and started at 3.0 on our clock, seen active by the poll
    sent at 40 and ended by the one sent at 50 (answered 50.5); it ran 45 s after its create on
    the backend, whose clock is 1000.25 s off ours."""
    clock = PollClock(interval=10.0)
    clock.job_created(0, answered_wall=clock.wall_offset + 1.0)
    clock.job_started(0, now=3.0)
    clock.poll_sent("a", 40.0)
    clock.poll_sent("a", 50.0)
    created_on_backend = clock.wall_offset + 1.0 - 1000.25 - 0.05  # answered 50 ms after the job existed
    clock.job_ended("a", 0, finished=True, now=50.5, metadata=metadata_for(created_on_backend))
    return clock


def test_an_end_the_backend_times_to_the_sub_second_sharpens_the_estimate():
    clock = clock_with_one_job_seen_ending(lambda created: {"created": backend_time(created),
                                                            "updated": backend_time(created + 45.0)})
    # start (3.0) to end on our clock (1.0 + 45 s, late by the create's answer), plus the margin;
    # the polls alone only say "at most 47 s" (sent at 50)
    assert clock.estimate == pytest.approx(1.0 + 45.0 - 3.0 + EXPECTED_END_MARGIN, abs=1e-3)


def test_backend_times_count_by_the_largest_and_never_beyond_the_polls_bound():
    clock = clock_with_one_job_seen_ending(lambda created: {"created": backend_time(created),
                                                            "updated": backend_time(created + 45.0)})
    clock.job_created(1, answered_wall=clock.wall_offset + 60.0)
    clock.job_started(1, now=61.0)  # answered 0.3 s later than the first one's, relative to its job
    clock.poll_sent("a", 100.0)
    clock.poll_sent("a", 110.0)
    created_on_backend = clock.wall_offset + 60.0 - 1000.25 - 0.05
    clock.job_ended("a", 1, finished=True, now=110.2, metadata={"created": backend_time(created_on_backend),
                                                                "updated": backend_time(created_on_backend + 45.3)})
    assert clock.estimate == pytest.approx(44.3 + EXPECTED_END_MARGIN, abs=1e-3)  # the later of 43.1 and 44.3
    clock.job_started(2, now=120.0)
    clock.poll_sent("a", 160.0)  # a job that ran 40 s: the polls' bound (40) is below both
    clock.job_ended("a", 2, finished=True, now=160.2)
    assert clock.estimate == 40.0


def test_a_first_wave_that_queued_long_does_not_delay_the_polls_of_later_quick_jobs():
    """Jobs polled at their expected end can only confirm it: without the backend's times of the
    latest ends, a first job that waited 300 s in the backend's queue would make every later one
    wait 300 s for its poll, however quickly it ran."""
    def ran(clock, row, created, started, seconds, seen):
        clock.job_created(row, answered_wall=clock.wall_offset + created)
        clock.job_started(row, now=started)
        clock.poll_sent("a", created + seconds - 0.5)  # the poll before still saw it active
        clock.poll_sent("a", seen)
        on_backend = clock.wall_offset + created - 0.05
        clock.job_ended("a", row, finished=True, now=seen + 0.2,
                        metadata={"created": backend_time(on_backend), "updated": backend_time(on_backend + seconds)})

    clock = PollClock(interval=10.0)
    ran(clock, 0, created=0.0, started=1.0, seconds=300.0, seen=302.0)  # queued ~299 s, then ran
    assert clock.estimate == pytest.approx(299.0 + EXPECTED_END_MARGIN, abs=1e-3)
    # the next job, polled at that expected end, ran 2 s by the backend's times
    ran(clock, 1, created=310.0, started=311.0, seconds=3.0, seen=311.0 + clock.estimate)
    assert clock.estimate == pytest.approx(2.0 + EXPECTED_END_MARGIN, abs=1e-3)
    clock.job_started(2, now=700.0)
    assert clock.next_poll("a", [2]) == pytest.approx(702.0 + EXPECTED_END_MARGIN, abs=1e-3)


@pytest.mark.parametrize("case", ["whole seconds", "ended before the poll that saw it active", "no times"])
def test_backend_times_that_cannot_be_trusted_leave_the_polls_upper_bound(case):
    def metadata(created):
        if case == "whole seconds":
            return {"created": backend_time(created, False), "updated": backend_time(created + 45.0, False)}
        if case == "no times":
            return {"status": "finished"}
        return {"created": backend_time(created), "updated": backend_time(created + 30.0)}  # 31 < 40 on our clock

    assert clock_with_one_job_seen_ending(metadata).estimate == 47.0  # sent at 50, started at 3


@pytest.mark.parametrize("case", ["whole seconds", "running after the answer that saw it", "no times"])
def test_running_times_that_cannot_be_trusted_leave_the_expected_end_from_the_start(case):
    """A job seen running is expected to end a run time after it began running only where the
    backend's times say so to the sub-second and agree with our polls (tests/test_running_since.py)."""
    clock = clock_with_one_job_seen_ending(lambda created: {"created": backend_time(created),
                                                            "updated": backend_time(created + 45.0)})
    clock.run_time = 5.0  # as learned from earlier jobs
    clock.job_created(1, answered_wall=clock.wall_offset + 60.0)
    clock.job_started(1, now=61.0)
    created = clock.wall_offset + 60.0
    began = {"whole seconds": backend_time(created + 10.0, False), "no times": None,
             "running after the answer that saw it": backend_time(created + 30.0)}[case]
    times = {"created": backend_time(created, case != "whole seconds"), "updated": began} if began else {}
    clock.job_running("a", 1, now=75.0, times=times)  # seen running by the answer at 75 (our clock)
    assert 1 not in clock.running and clock.expected_change(1) == 61.0 + clock.estimate
