"""Job slots and start turns of backend accounts, shared through the SQL store.

Runs on any number of machines that share the database never exceed an account's
`parallel_jobs` together, whatever campaign they work: a claim locks the account's row
(`SELECT … FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` serializes writers anyway), counts what the
others hold, lets the caller decide, and records how many slots this run holds after its
decision — all in one transaction. What others hold is counted from rows, never from leases:
- a live run holds max(what it recorded at its last claim, its active rows): the record covers the
  intents it has not written yet, the rows cover rows it adopted since;
- active rows of a run whose lease ended (or of no run) still hold their slots: their jobs run on
  the backend until someone sees them end.
`StoreStartSchedule` hands out `max_starts_per_minute` turns from the account's row the same way.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Mapping, Tuple, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from jobdb.sql.engine import db_now, retrying
from jobdb.sql.schema import accounts, jobs, run_accounts
from jobdb.sql.store import SqlJobStore
from jobdb.status import HOLDS_SLOT

log = logging.getLogger(__name__)
T = TypeVar("T")


def _insert(engine, table):
    return (postgresql.insert(table) if engine.dialect.name == "postgresql" else sqlite.insert(table))


def lock_accounts(conn, keys) -> None:
    """Make sure each account has its row, then lock them in a fixed order (no deadlock)."""
    conn.execute(_insert(conn.engine, accounts).values([{"account": k, "next_turn_at": 0.0} for k in keys])
                 .on_conflict_do_nothing())
    conn.execute(select(accounts.c.account).where(accounts.c.account.in_(keys))
                 .order_by(accounts.c.account).with_for_update()).all()


class SqlAccountSlots:
    """This run's share of its backends' accounts, counted over every campaign in the database."""

    def __init__(self, store: SqlJobStore, accounts_by_backend: Mapping[str, str]):
        self.store = store
        self.accounts = dict(accounts_by_backend)
        self.keys = sorted(set(self.accounts.values()))
        store.accounts.update(self.accounts)

    def claim(self, decide: Callable[[Dict[str, int]], Tuple[T, Mapping[str, int]]]) -> T:
        """`decide(others)` gets the slots other runs hold per backend name and returns (anything,
        the slots this run holds per backend name after its decision); recorded, `anything` returned."""
        engine = self.store.db.engine

        def transaction():
            with engine.begin() as conn:
                lock_accounts(conn, self.keys)
                by_account = self._others(conn)
                result, mine = decide({name: by_account[key] for name, key in self.accounts.items()})
                totals = {key: 0 for key in self.keys}
                for name, count in mine.items():
                    if name in self.accounts:
                        totals[self.accounts[name]] += int(count)
                statement = _insert(engine, run_accounts).values(
                    [{"run_id": self.store.run_id, "account": k, "holding": n} for k, n in totals.items()])
                conn.execute(statement.on_conflict_do_update(
                    index_elements=["run_id", "account"], set_={"holding": statement.excluded.holding}))
                return result
        return retrying(transaction, "claiming job slots", log)

    def others(self) -> Dict[str, int]:
        with self.store.db.engine.begin() as conn:
            by_account = self._others(conn)
        return {name: by_account[key] for name, key in self.accounts.items()}

    def _others(self, conn) -> Dict[str, int]:
        me = self.store.run_id
        live = set(self.store.lock.live_runs(conn))
        recorded: Dict[Tuple[str, str], int] = {
            (a, r): int(n) for r, a, n in conn.execute(
                select(run_accounts.c.run_id, run_accounts.c.account, run_accounts.c.holding)
                .where(run_accounts.c.account.in_(self.keys)))}
        active: Dict[Tuple[str, object], int] = {
            (a, o): int(n) for a, o, n in conn.execute(
                select(jobs.c.account, jobs.c.owner, func.count())
                .where(jobs.c.account.in_(self.keys), jobs.c.status.in_(sorted(HOLDS_SLOT)))
                .group_by(jobs.c.account, jobs.c.owner))}
        totals = {key: 0 for key in self.keys}
        for key in self.keys:
            for run in live - {me}:
                totals[key] += max(recorded.get((key, run), 0), active.get((key, run), 0))
            for (account, owner), n in active.items():
                if account == key and owner != me and owner not in live:
                    totals[key] += n
        return totals

    def close(self) -> None:
        """Nothing to do: the run's records go with its lease (`RunLease.release`)."""


class StoreStartSchedule:
    """Start turns of one account, `interval` s apart, shared by every run using the database."""

    def __init__(self, engine, account: str, interval: float):
        self.engine = engine
        self.account = account
        self.interval = interval

    def reserve(self) -> float:
        """Reserve the next free turn; its local wall-clock time (the caller sleeps until then)."""
        def transaction():
            with self.engine.begin() as conn:
                lock_accounts(conn, [self.account])
                now, next_free = conn.execute(select(db_now(self.engine), accounts.c.next_turn_at)
                                              .where(accounts.c.account == self.account)).one()
                turn = max(float(now), float(next_free or 0.0))
                conn.execute(update(accounts).where(accounts.c.account == self.account)
                             .values(next_turn_at=turn + self.interval))
                return time.time() + (turn - float(now))
        return retrying(transaction, "reserving a start turn", log)

    def push_back(self, until: float) -> None:
        """No turn before `until` (local wall clock): the server asked the account to wait."""
        def transaction():
            with self.engine.begin() as conn:
                lock_accounts(conn, [self.account])
                now = float(conn.execute(select(db_now(self.engine))).scalar())
                conn.execute(update(accounts).where(accounts.c.account == self.account,
                                                    accounts.c.next_turn_at < now + (until - time.time()))
                             .values(next_turn_at=now + (until - time.time())))
        retrying(transaction, "pushing start turns back", log)


def share_start_turns(store: SqlJobStore, connections) -> Callable[[], None]:
    """Make the start turns of these connections' accounts come from the database for this run
    (every run on every machine then shares them); returns what puts the local schedules back.

    The account pacers (tasks/pacing.py) are per process and keep their file schedule for runs
    of file stores; a SQL run lends them the store's schedule only while it runs."""
    swapped = []
    for connection in connections:
        pacer = getattr(connection, "pacer", None)
        schedule = getattr(pacer, "_schedule", None)
        if schedule is None or isinstance(schedule, StoreStartSchedule):
            continue
        swapped.append((pacer, schedule))
        pacer._schedule = StoreStartSchedule(store.db.engine, pacer.account, schedule.interval)

    def restore() -> None:
        for pacer, schedule in swapped:
            pacer._schedule = schedule
    return restore
