"""Client-side pacing to a backend account's quotas, before a request is sent.

One `AccountPacer` per backend account (tasks/accounts/identity.py) per process, shared by every thread
and every connection of that account (`pacer_for`):

- `max_concurrent_requests`: a semaphore around each request (a streamed response holds its slot
  until it is closed or dropped);
- `max_starts_per_minute`: `POST /jobs/{id}/results` take turns just over `60 / N` s apart. Each
  start reserves the next free turn and sleeps until then (no polling, no thundering herd). The
  schedule lives in a small JSON file under a file lock in the account's state folder
  (`account_dir`, beside its slot ledger), so runs in other processes on this machine that use the
  same account share it (cheap: one lock per start, never per poll);
- a 429 pauses the whole account for `Retry-After` (every thread waits, not just the caller),
  and the start schedule resumes spaced from the end of the pause.

Why not pyrate-limiter: its blocking acquire retries after sleeping rather than handing out
turns, and it has no way to push a bucket's schedule when the server says `Retry-After`; the
whole need is ~40 lines on `filelock` (already a dependency). A turn every `60 / N` s is a
token bucket of burst 1: it also satisfies any bucket of the same rate with a larger burst.
"""
from __future__ import annotations

import json
import threading
import time
import weakref
from pathlib import Path
from typing import Dict, Optional

from filelock import FileLock

from jobdb.atomic import write_atomic
from tasks.accounts.identity import account_dir

# Turns a little wider than 60/N s: requests that leave exactly on the server's rate arrive
# with jitter, and a start landing 1 ms early is a 429.
TURN_MARGIN = 0.01
TURN_MARGIN_SECONDS = 0.05


def turn_interval(max_starts_per_minute: float) -> float:
    return 60.0 / max_starts_per_minute * (1 + TURN_MARGIN) + TURN_MARGIN_SECONDS


class StartSchedule:
    """Turns for job starts of one account, `interval` s apart, shared through a file across processes."""

    def __init__(self, account: str, interval: float, directory: Optional[Path] = None):
        self.interval = interval
        directory = directory or account_dir(account)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "starts.json"
        # The file lock keeps other processes out; it is re-entrant within a process, so threads
        # take the in-process lock first.
        self._file_lock = FileLock(str(self.path) + ".lock", thread_local=False)
        self._thread_lock = threading.Lock()

    def reserve(self) -> float:
        """Reserve the next free turn; returns its wall-clock time (the caller sleeps until then)."""
        with self._thread_lock, self._file_lock:
            now = time.time()
            turn = max(now, self._next_free())
            self._write(turn + self.interval)
            return turn

    def push_back(self, until: float) -> None:
        """No turn before `until` (wall clock): the server asked the account to wait."""
        with self._thread_lock, self._file_lock:
            if self._next_free() < until:
                self._write(until)

    def _next_free(self) -> float:
        try:
            return float(json.loads(self.path.read_text())["next_free"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0  # no file yet, or one a crash left unreadable: no turn is taken

    def _write(self, next_free: float) -> None:
        write_atomic(self.path, json.dumps({"next_free": next_free}), durable=False)  # one write per start: no disk flush


class AccountPacer:
    """The quotas of one backend account within this process (see the module docstring)."""

    def __init__(self, account: str, max_starts_per_minute: Optional[float] = None,
                 max_concurrent_requests: Optional[int] = None):
        self.account = account
        self.max_starts_per_minute = max_starts_per_minute
        self.max_concurrent_requests = max_concurrent_requests
        self._slots = threading.BoundedSemaphore(max_concurrent_requests) if max_concurrent_requests else None
        self._schedule = StartSchedule(account, turn_interval(max_starts_per_minute)) if max_starts_per_minute else None
        self._paused_until = 0.0  # wall clock
        self._pause_changed = threading.Condition()
        self.counters: Dict[str, float] = {"paused_seconds": 0.0, "pauses": 0, "start_wait_seconds": 0.0}

    def set_max_starts_per_minute(self, rate: Optional[float]) -> None:
        """A new start rate from now on (an operator's override while the run goes on; None: off).
        Turns already reserved keep their time; the next one is spaced by the new rate."""
        if rate is None:
            self._schedule = None
        elif self._schedule is None:
            self._schedule = StartSchedule(self.account, turn_interval(rate))
        else:
            self._schedule.interval = turn_interval(rate)
        self.max_starts_per_minute = rate

    # ------------------------------------------------------------------ before a request
    def acquire(self, is_start: bool) -> "Turn":
        """Wait until this request may go: no pause, a start turn (for starts), a request slot."""
        while True:
            self._wait_pause()
            schedule = self._schedule  # one read: an override may replace it meanwhile
            if is_start and schedule is not None:
                turn = schedule.reserve()
                delay = turn - time.time()
                if delay > 0:
                    self.counters["start_wait_seconds"] += delay
                    time.sleep(delay)
                if self.paused():
                    continue  # a 429 came while we waited: take a turn after the pause instead
            if self._slots is not None:
                self._slots.acquire()
                if self.paused():
                    self._slots.release()
                    continue
            return Turn(self._slots)

    # ------------------------------------------------------------------- after a 429
    def pause(self, seconds: float) -> None:
        """Every request of the account waits `seconds` from now (a 429 told us to)."""
        until = time.time() + max(0.0, seconds)
        with self._pause_changed:
            if until > self._paused_until:
                self._paused_until = until
                self.counters["pauses"] += 1
                self._pause_changed.notify_all()
        schedule = self._schedule
        if schedule is not None:
            schedule.push_back(until)

    def paused(self) -> bool:
        return time.time() < self._paused_until

    def _wait_pause(self) -> None:
        with self._pause_changed:
            while True:
                remaining = self._paused_until - time.time()
                if remaining <= 0:
                    return
                self.counters["paused_seconds"] += remaining
                self._pause_changed.wait(remaining)


class Turn:
    """A request slot held from `acquire` until `release` (idempotent; also on garbage collection)."""

    def __init__(self, slots: Optional[threading.BoundedSemaphore]):
        self._slots = slots
        self._released = slots is None
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._slots.release()

    def release_with(self, response: object) -> None:
        """Release when `response` (a streamed body) is closed, or dropped without closing."""
        weakref.finalize(response, self.release)


_PACERS: Dict[str, AccountPacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(account: str, max_starts_per_minute: Optional[float] = None,
              max_concurrent_requests: Optional[int] = None) -> AccountPacer:
    """The process-wide pacer of `account`; when runs configure one account differently, the
    strictest value of each quota wins (for pacers made from now on)."""
    with _PACERS_LOCK:
        pacer = _PACERS.get(account)
        if pacer is not None and _same(pacer, max_starts_per_minute, max_concurrent_requests):
            return pacer
        if pacer is not None:
            max_starts_per_minute = _strictest(pacer.max_starts_per_minute, max_starts_per_minute)
            max_concurrent_requests = _strictest(pacer.max_concurrent_requests, max_concurrent_requests)
            if _same(pacer, max_starts_per_minute, max_concurrent_requests):
                return pacer
        pacer = AccountPacer(account, max_starts_per_minute, max_concurrent_requests)
        _PACERS[account] = pacer
        return pacer


def _same(pacer: AccountPacer, starts: Optional[float], concurrent: Optional[int]) -> bool:
    return pacer.max_starts_per_minute == starts and pacer.max_concurrent_requests == concurrent


def _strictest(a, b):
    return b if a is None else a if b is None else min(a, b)
