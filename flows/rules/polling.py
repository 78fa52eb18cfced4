"""When a poll earns its request (issue 21): a backend's jobs are listed when one of them can have
changed, not merely because a poll interval went by. A stingy backend counts every listing.

- A job this run started is expected to end `estimate` seconds after its start was confirmed:
  the shortest time from start to seen-finished among this run's finished jobs. Before any job
  finished, a job is fresh (nothing to see) for one poll interval after its start.
- The moment a job's expected end passes, its backend is polled (at most every `interval / 4`,
  so a wave of jobs ending together costs one listing); jobs past their expected end are then
  polled every interval until they are seen ending: never fewer polls than it takes to see each
  end, and no later than one interval after it.
- Jobs whose start this run did not see (an earlier run's, a crash's leftovers) can change any
  time: their backend is polled every interval, as before; so is every backend while the run
  cancels long runners (`cancel_after` needs the running jobs seen on time).
- Jobs created and not started (created ahead) change only when this run starts them: they
  alone never earn a poll.
- The estimate is sharper where the backend gives sub-second `created` / `updated` times of an
  ended job (openEO's job metadata): how long it ran from its start to its end is then known to
  the backend's own clock, not only "ended before the poll that saw it" (which carries the
  first round's poll phase into every later round, up to an interval). It is used only between
  what this run's own polls prove (active at the poll before, ended by the answer), plus
  `EXPECTED_END_MARGIN`: a poll sent a little early sees nothing and costs an interval. Such
  times carry the jitter of our requests' answers, so the largest of one answer's ends counts
  (the polls' bounds, late by nature, count by the smallest), and never beyond the polls' bound:
  with jobs of very different lengths the polls' bound decides, as without backend times. Only
  the latest answer's ends count: jobs polled at their expected end can only confirm it, never
  show it is too late, so a first wave that queued long on the backend (a busy backend, jobs
  held behind a gate) would otherwise make every later wave wait as long for its poll.
- A job seen running with the backend's sub-second `updated` (the time of its last status
  change, openEO's job metadata) is expected to end a run time after it began running: where a
  backend runs only so many jobs per user and queues the rest, the time from start to end says
  little (it includes the queue), the time from running to end does. The run time is the
  largest of the latest answer's, each from two of the backend's own times (running since,
  ended), plus `EXPECTED_END_MARGIN`. Without such times: from the start, as above.
- Jobs expected to end within `WAVE_GAP_SHARE` of an interval of the first one are listed
  together, once the last of them is due: one listing per wave of jobs started together.
- A poll is submitted `lead` seconds before it is due and lists at its time (`poll_sent` takes
  that time): when to list is unchanged, only Prefect's delay before the task body moves off it.
  Jobs past their expected end are listed an interval after the last answer (not the last
  listing), so a listing answered late under load is not followed by another at once.

The cycle owns one `PollClock` and tells it what happened; the clock only answers questions.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional

# Polls of one backend at most this share of the interval apart when jobs reach their expected end;
# expected ends this close to the first one wait for one listing together.
WAVE_GAP_SHARE = 0.25
# Seconds added to an end known from the backend's own times (its requests' answers jitter).
EXPECTED_END_MARGIN = 0.1
# A poll's task run is submitted this long before its listing is due, and waits in its body:
# Prefect's work before a task body (its tag slot check: 0.1 s idle, 1-3 s at load 20) is then
# done while the jobs still run, not after they ended.
ARM_LEAD_SECONDS = 3.0


class PollClock:
    def __init__(self, interval: float, every_interval: bool = False):
        self.interval = interval
        self.every_interval = every_interval  # poll on the interval whatever the jobs (cancel_after)
        self.started: Dict[int, float] = {}  # row -> monotonic time its start was confirmed
        self.created: Dict[int, float] = {}  # row -> wall time its create was answered (tasks/start.py)
        self.sent: Dict[str, float] = {}  # backend -> when its last poll was sent
        self.sent_before: Dict[str, float] = {}  # backend -> when the poll before it was sent
        self.answered: Dict[str, float] = {}  # backend -> when its last poll's answer was applied
        self.estimate: Optional[float] = None  # seconds from start to end, from finished jobs
        self.upper: Optional[float] = None  # the smallest of the polls' bounds
        self.exact: Optional[float] = None  # the largest end known from backend times in the latest answer
        self.exact_seen: Optional[float] = None  # when the poll whose answer gave `exact` was sent
        self.running: Dict[int, float] = {}  # row -> monotonic time its job began running (the backend's times)
        self.running_on_backend: Dict[int, float] = {}  # row -> the same, on the backend's clock
        self.run_time: Optional[float] = None  # seconds from running to end, from the backend's times
        self.run_time_seen: Optional[float] = None  # when the poll whose answer gave `run_time` was sent
        self.wall_offset = time.time() - time.monotonic()  # wall = monotonic + offset

    @property
    def lead(self) -> float:
        """How long before its time a poll is submitted."""
        return ARM_LEAD_SECONDS

    # --- what happened ------------------------------------------------------------------------
    def job_created(self, row: int, answered_wall: float) -> None:
        self.created[row] = answered_wall

    def job_started(self, row: int, now: float, answered_wall: Optional[float] = None) -> None:
        """`answered_wall`: when the start request was answered (the task's clock), else `now`."""
        self.started[row] = now if answered_wall is None else min(now, answered_wall - self.wall_offset)

    def poll_sent(self, backend: str, now: float) -> None:
        if backend in self.sent:
            self.sent_before[backend] = self.sent[backend]
        self.sent[backend] = now

    def poll_answered(self, backend: str, now: float) -> None:
        """A poll's answer came: jobs past their expected end wait an interval from here (a listing
        answered late under load is not followed by another at once)."""
        self.answered[backend] = now

    def job_running(self, backend: str, row: int, now: float, times: Optional[Mapping[str, Any]] = None) -> None:
        """A poll of `backend` (answered by `now`) saw the row's job running; `times`: its listing
        entry's `created` and `updated` (when it began running, on the backend's clock)."""
        created = self.created.get(row)
        began = precise_time((times or {}).get("created"))
        running = precise_time((times or {}).get("updated"))
        if created is None or row not in self.started or began is None or running is None or running < began:
            return
        since = created + (running - began) - self.wall_offset  # moved to our clock by the create's answer
        # late by the create's answer (safe: a poll after the end sees it); beyond an interval after the
        # answer that saw it running, the times cannot be trusted
        if since <= now + self.interval:
            self.running[row], self.running_on_backend[row] = since, running

    def job_ended(self, backend: str, row: int, finished: bool, now: Optional[float] = None,
                  metadata: Optional[Mapping[str, Any]] = None) -> None:
        """A poll of `backend` (sent at `sent[backend]`, answered by `now`) saw the row's job end;
        `metadata`: the ended job's description (its `created` and `updated` times)."""
        since = self.started.pop(row, None)
        created = self.created.pop(row, None)
        running_since = self.running.pop(row, None)
        running_on_backend = self.running_on_backend.pop(row, None)
        seen = self.sent.get(backend)
        ended = precise_time((metadata or {}).get("updated"))
        if finished and running_on_backend is not None and ended is not None and seen is not None \
                and running_on_backend <= ended and running_since + (ended - running_on_backend) <= (now or seen):
            run = ended - running_on_backend + EXPECTED_END_MARGIN
            same_answer = self.run_time is not None and self.run_time_seen == seen
            self.run_time = max(self.run_time, run) if same_answer else run
            self.run_time_seen = seen
        if finished and since is not None and seen is not None and seen > since:
            took = seen - since  # an upper bound: polling at it is late by a little, never early
            self.upper = took if self.upper is None else min(self.upper, took)
            exact = self._took_by_backend(created, metadata, since)
            active_at = self.sent_before.get(backend, since) - since  # the poll before saw it active
            if exact is not None and max(0.0, active_at) <= exact <= (now if now is not None else seen) - since:
                same_answer = self.exact is not None and self.exact_seen == seen
                self.exact = max(self.exact, exact) if same_answer else exact
                self.exact_seen = seen
            self.estimate = self.upper if self.exact is None else min(self.upper, self.exact)

    def _took_by_backend(self, created: Optional[float], metadata: Optional[Mapping[str, Any]],
                         since: float) -> Optional[float]:
        """Start (our clock) to end (the backend's `updated`, moved to our clock by its `created`
        and our create's answer), plus the margin; None without sub-second times from the backend."""
        if created is None or not metadata:
            return None
        began, ended = precise_time(metadata.get("created")), precise_time(metadata.get("updated"))
        if began is None or ended is None or ended < began:
            return None
        return created + (ended - began) - self.wall_offset - since + EXPECTED_END_MARGIN

    # --- questions ------------------------------------------------------------------------------
    def expected_change(self, row: int) -> float:
        """The monotonic time from which the row's job can have changed (0: any time)."""
        since = self.started.get(row)
        if since is None or self.every_interval:
            return 0.0
        running = self.running.get(row)
        if running is not None and self.run_time is not None:
            return running + self.run_time
        return since + (self.estimate if self.estimate is not None else self.interval)

    def due(self, now: float, followed: Mapping[str, Iterable[int]]) -> FrozenSet[str]:
        """Backends worth a poll now; `followed`: backend -> rows of its started, active jobs."""
        return frozenset(b for b, rows in followed.items() if self.next_poll(b, rows) <= now)

    def next_poll(self, backend: str, rows: Iterable[int]) -> float:
        """When `backend` is worth a poll next (inf: none of its jobs can change without us)."""
        last = self.sent.get(backend, float("-inf"))
        best = float("inf")
        fresh = []
        for row in rows:
            change = self.expected_change(row)
            if change > last:  # not seen since it can have changed
                fresh.append(change)
            else:  # overdue: every interval (from the last answer) until it is seen ending
                best = min(best, max(last, self.answered.get(backend, last)) + self.interval)
        if fresh:  # at once, the jobs expected within a wave gap of the first with it: one listing
            gap = WAVE_GAP_SHARE * self.interval
            first = min(fresh)
            wave = max(change for change in fresh if change <= first + gap)
            best = min(best, max(wave, last + gap))
        return best

    def next_wake(self, followed: Mapping[str, Iterable[int]]) -> float:
        return min((self.next_poll(b, rows) for b, rows in followed.items()), default=float("inf"))


def precise_time(value: Any) -> Optional[float]:
    """An RFC 3339 time with a fraction of a second as epoch seconds; None otherwise (a whole
    second is too coarse to poll by)."""
    if not isinstance(value, str) or "." not in value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
