"""One owner per job DB: an exclusive OS file lock held for a run's whole life.

`filelock` takes an `flock` on `.<db name>.lock`; the kernel drops it when the holding process
ends in any way (Ctrl-C, SIGKILL, a reboot), so a lock can never outlive its run. A JSON note
beside it says who holds it, for the message a second run prints. Network file systems: flock
over NFSv4 works between machines; over older NFS or SMB mounts it may be local to one machine,
so keep a job DB that several machines' runs share on a local disk of one worker, or on NFSv4.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from filelock import FileLock, Timeout

from jobdb.atomic import write_atomic
from jobdb.paths import JobDbPaths
from jobdb.schema import utc_now


class JobDbLocked(RuntimeError):
    """Another live run owns this job DB."""

    def __init__(self, db: Path, holder: Optional[Dict[str, Any]]):
        self.db = db
        self.holder = holder or {}
        super().__init__(self.describe())

    def describe(self) -> str:
        h = self.holder
        who = ", ".join(
            part for part in (
                f"flow run {h['flow_run_id']}" if h.get("flow_run_id") else None,
                f"pid {h['pid']} on {h.get('host', '?')}" if h.get("pid") else None,
                f"since {h['since']}" if h.get("since") else None,
            ) if part
        ) or "a process that left no note"
        return (f"job DB {self.db} is in use by another run ({who}); wait for it to end, "
                "or pass --wait-for-lock (wait_for_lock=True) to queue behind it")


class JobDbLock:
    """Exclusive lock on one job DB, with a note naming its holder."""

    def __init__(self, job_db: str | Path):
        self.paths = JobDbPaths.of(job_db)
        self._lock = FileLock(str(self.paths.lock), thread_local=False, preserve_lock_file=True)
        # The note found when the lock became ours: a clean release removes the note, so one left
        # behind names a holder that died (SIGKILL, a lost machine) or could not record its end.
        self.previous_holder: Optional[Dict[str, Any]] = None

    def is_free(self) -> bool:
        """True if no live run holds the lock (checked by taking and dropping it; the note stays)."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        self._lock.release(force=True)
        return True

    @property
    def is_held(self) -> bool:
        return self._lock.is_locked

    def holder(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.paths.lock_holder.read_text())
        except (OSError, ValueError):
            return None

    def acquire(
        self,
        flow_run_id: Optional[str] = None,
        wait_seconds: float = 0.0,
        on_wait: Optional[Callable[[JobDbLocked], None]] = None,
    ) -> None:
        """Take the lock, or raise JobDbLocked; with `wait_seconds` > 0 wait that long for it
        (float('inf'): for ever), calling `on_wait` once when the wait begins."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            if wait_seconds <= 0:
                raise JobDbLocked(self.paths.db, self.holder()) from None
            if on_wait is not None:
                on_wait(JobDbLocked(self.paths.db, self.holder()))
            try:
                self._lock.acquire(timeout=-1 if wait_seconds == float("inf") else wait_seconds, poll_interval=0.5)
            except Timeout:
                raise JobDbLocked(self.paths.db, self.holder()) from None
        self.previous_holder = self.holder()
        note = {"host": socket.gethostname(), "pid": os.getpid(), "flow_run_id": flow_run_id, "since": utc_now(),
                "acquired_monotonic": time.monotonic()}
        try:
            write_atomic(self.paths.lock_holder, json.dumps(note), durable=False)
        except OSError:
            pass  # the note is a courtesy; the lock itself is what protects the DB

    def release(self, leave_note: Optional[Dict[str, Any]] = None) -> None:
        """Release; `leave_note`: facts added to the holder note, which then stays for the next
        holder (e.g. the final state this run could not record because its Prefect API was gone)."""
        if self._lock.is_locked:
            try:
                if leave_note:
                    write_atomic(self.paths.lock_holder, json.dumps({**(self.holder() or {}), **leave_note}),
                                 durable=False)
                else:
                    self.paths.lock_holder.unlink(missing_ok=True)
            except OSError:
                pass
            self._lock.release(force=True)

    def __enter__(self) -> "JobDbLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
