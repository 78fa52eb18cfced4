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

The cycle owns one `PollClock` and tells it what happened; the clock only answers questions.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Mapping, Optional

# Polls of one backend at most this share of the interval apart when jobs reach their expected end.
WAVE_GAP_SHARE = 0.25


class PollClock:
    def __init__(self, interval: float, every_interval: bool = False):
        self.interval = interval
        self.every_interval = every_interval  # poll on the interval whatever the jobs (cancel_after)
        self.started: Dict[int, float] = {}  # row -> monotonic time its start was confirmed
        self.sent: Dict[str, float] = {}  # backend -> when its last poll was sent
        self.estimate: Optional[float] = None  # seconds from start to end, from finished jobs

    # --- what happened ------------------------------------------------------------------------
    def job_started(self, row: int, now: float) -> None:
        self.started[row] = now

    def poll_sent(self, backend: str, now: float) -> None:
        self.sent[backend] = now

    def job_ended(self, backend: str, row: int, finished: bool) -> None:
        """A poll of `backend` (sent at `sent[backend]`) saw the row's job end."""
        since = self.started.pop(row, None)
        seen = self.sent.get(backend)
        if finished and since is not None and seen is not None and seen > since:
            took = seen - since  # an upper bound: polling at it is late by a little, never early
            self.estimate = took if self.estimate is None else min(self.estimate, took)

    # --- questions ------------------------------------------------------------------------------
    def expected_change(self, row: int) -> float:
        """The monotonic time from which the row's job can have changed (0: any time)."""
        since = self.started.get(row)
        if since is None or self.every_interval:
            return 0.0
        return since + (self.estimate if self.estimate is not None else self.interval)

    def due(self, now: float, followed: Mapping[str, Iterable[int]]) -> FrozenSet[str]:
        """Backends worth a poll now; `followed`: backend -> rows of its started, active jobs."""
        return frozenset(b for b, rows in followed.items() if self.next_poll(b, rows) <= now)

    def next_poll(self, backend: str, rows: Iterable[int]) -> float:
        """When `backend` is worth a poll next (inf: none of its jobs can change without us)."""
        last = self.sent.get(backend, float("-inf"))
        best = float("inf")
        for row in rows:
            change = self.expected_change(row)
            if change > last:  # not seen since it can have changed: at once (a wave: one poll)
                best = min(best, max(change, last + WAVE_GAP_SHARE * self.interval))
            else:  # overdue: every interval until it is seen ending
                best = min(best, last + self.interval)
        return best

    def next_wake(self, followed: Mapping[str, Iterable[int]]) -> float:
        return min((self.next_poll(b, rows) for b, rows in followed.items()), default=float("inf"))
