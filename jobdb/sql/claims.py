"""Row claims of the SQL store: which run works which rows, with a heartbeat lease.

A run registers in `runs` and a thread refreshes its `heartbeat_at` (database clock) every quarter
lease. Rows are claimed by setting `owner` to the run's id, in one statement that skips rows
another transaction holds (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serializes writers by
`BEGIN IMMEDIATE` instead). A row is claimable when it has no owner, or its owner's heartbeat is
older than the lease: a killed run's rows are adopted by another run after at most one lease,
and the adopter finds their jobs on the backend (job id, or the marker of a `creating` row). A
lease that ended says nothing about the remote job: adopted rows keep their status and are
polled like any other.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Dict, List, Mapping, Optional

from sqlalchemy import and_, delete, exists, insert, or_, select, update

from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.engine import db_now, retrying
from jobdb.sql.schema import jobs, run_accounts, runs

log = logging.getLogger(__name__)
LEASE_ENV = "OPENEO_JOBS_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 60.0


def lease_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_SECONDS))
    except ValueError:
        return DEFAULT_LEASE_SECONDS


class RunLease:
    """This run's registration and heartbeat; also what `run_jobs` takes as the DB's "lock" (a SQL
    campaign has none: any number of runs may work it)."""

    def __init__(self, db: SqlDatabase, campaign: str, run_id: str, lease: Optional[float] = None):
        self.db = db
        self.campaign = campaign
        self.run_id = run_id
        self.lease = lease if lease is not None else lease_seconds()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.is_held = False
        self.previous_holder: Optional[Dict[str, Any]] = None  # a dead run's note (flows/run_loop/owners.py marks it)

    # --- the lock interface run_jobs uses -----------------------------------------------------
    def acquire(self, flow_run_id: Optional[str] = None, wait_seconds: float = 0.0, on_wait=None) -> None:
        note = {"host": socket.gethostname(), "pid": os.getpid(), "flow_run_id": flow_run_id}
        now = db_now(self.db.engine)

        def register():
            with self.db.engine.begin() as conn:
                # Runs of this campaign whose lease ended left without saying so: the latest one's flow
                # run is marked Crashed by the caller; their records go (their rows are claimable
                # already, and their jobs' slots are counted from the rows).
                dead = conn.execute(select(runs.c.run_id, runs.c.note).where(
                    runs.c.campaign == self.campaign, runs.c.heartbeat_at <= now - self.lease)
                    .order_by(runs.c.heartbeat_at.desc())).all()
                if dead:
                    self.previous_holder = dict(dead[0].note or {})
                    gone = [d.run_id for d in dead]
                    conn.execute(delete(run_accounts).where(run_accounts.c.run_id.in_(gone)))
                    conn.execute(delete(runs).where(runs.c.run_id.in_(gone)))
                conn.execute(insert(runs).values(run_id=self.run_id, campaign=self.campaign, heartbeat_at=now,
                                                 started_at=now, note=note))
        retrying(register, "registering the run", log)
        self.is_held = True
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def release(self, leave_note: Optional[Dict[str, Any]] = None) -> None:
        """Give every claimed row back (another run may take them at once) and leave. (`leave_note`:
        the file lock's way to tell the next run an end the API did not record; a SQL run that
        leaves cleanly has no such end to tell.)"""
        if not self.is_held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

        def leave():
            with self.db.engine.begin() as conn:
                conn.execute(update(jobs).where(jobs.c.campaign == self.campaign, jobs.c.owner == self.run_id)
                             .values(owner=None))
                conn.execute(delete(run_accounts).where(run_accounts.c.run_id == self.run_id))
                conn.execute(delete(runs).where(runs.c.run_id == self.run_id))
        try:
            retrying(leave, "releasing the run's rows", log, deadline_seconds=10.0)
        except Exception as exc:  # noqa: BLE001 - the lease ends by itself; others adopt the rows then
            log.warning("job store: could not release this run's rows (%s); they return after the lease", exc)
        self.is_held = False

    def holder(self) -> None:
        return None

    # --- heartbeat ----------------------------------------------------------------------------
    def beat(self) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == self.run_id)
                         .values(heartbeat_at=db_now(self.db.engine)))

    def _beat(self) -> None:
        interval = max(0.2, self.lease / 4)
        while not self._stop.wait(interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - keep beating; writes check ownership anyway
                log.warning("job store: heartbeat failed (%s)", str(exc).splitlines()[0])

    # --- claims -------------------------------------------------------------------------------
    def live_owner(self):
        """SQL: the row's owner is a run whose lease has not ended."""
        return exists().where(runs.c.run_id == jobs.c.owner,
                              runs.c.heartbeat_at > db_now(self.db.engine) - self.lease)

    def claimable(self, live_runs=None):
        """SQL: nobody holds the row, or a run whose lease ended. With `live_runs` (a subquery of the
        live runs' ids) no per-row lookup of `runs` is needed."""
        if live_runs is None:
            return or_(jobs.c.owner.is_(None), and_(jobs.c.owner != self.run_id, ~self.live_owner()))
        return or_(jobs.c.owner.is_(None), and_(jobs.c.owner != self.run_id, jobs.c.owner.notin_(live_runs)))

    def claim(self, condition, limit: int) -> List[Mapping[str, Any]]:
        """Claim up to `limit` claimable rows matching `condition`, lowest rows first; returns them."""
        if limit <= 0:
            return []

        def run():
            with self.db.engine.begin() as conn:
                return self.claim_in(conn, condition, limit)
        return retrying(run, "claiming rows", log)

    def claim_in(self, conn, condition, limit: int) -> List[Dict[str, Any]]:
        """`claim` inside the caller's transaction (one statement; the caller retries)."""
        if limit <= 0:
            return []
        # The other live runs are an uncorrelated subquery: PostgreSQL reads `runs` once (a hashed
        # subplan), not once per row. The choice is a CTE joined by the UPDATE, not `row_index IN
        # (subquery)`: PostgreSQL may rescan such a subquery per row, and with SKIP LOCKED each rescan
        # picks other rows, so the LIMIT no longer bounds the claim (measured: 500 rows for a limit of 100).
        live = select(runs.c.run_id).where(runs.c.heartbeat_at > db_now(self.db.engine) - self.lease)
        chosen = (select(jobs.c.row_index)
                  .where(jobs.c.campaign == self.campaign, condition, self.claimable(live))
                  .order_by(jobs.c.row_index).limit(limit).with_for_update(skip_locked=True)
                  .cte("chosen"))
        statement = (update(jobs).where(jobs.c.campaign == self.campaign, jobs.c.row_index == chosen.c.row_index)
                     .values(owner=self.run_id).returning(*jobs.c))
        return [dict(r) for r in conn.execute(statement).mappings()]

    def live_runs(self, conn) -> Dict[str, float]:
        rows = conn.execute(select(runs.c.run_id, runs.c.heartbeat_at)
                            .where(runs.c.heartbeat_at > db_now(self.db.engine) - self.lease))
        return {r: h for r, h in rows}
