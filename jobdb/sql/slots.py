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
Each run also records what it *wants* (holding + rows it could start); a claim counts each other
live run as holding at least its fair share (jobdb/fair_shares.py), as the flock ledger does,
and a run waiting for slots other runs hold names them (jobdb/slot_waiting.py).
`StoreStartSchedule` hands out `max_starts_per_minute` turns from the account's row the same way.

What a claim costs (it runs in every cycle that may start or create a job: flows/run_loop/cycle.py
skips it in cycles that could start nothing even if no other run held a slot): BEGIN, the lock of
the accounts' rows, one read of everything the decision needs (the live runs with their notes and
records, and the active rows per account and owner: one UNION ALL), this run's record only when it
changed, COMMIT — 4 or 5 round trips (9 before). The lock is its own statement on purpose: in READ
COMMITTED a statement reads as of its own start, so a read that waited for the lock inside the same
statement would miss what the previous holder of the lock had just written.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

from sqlalchemy import and_, func, literal, null, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite

from jobdb.fair_shares import others_with_reservations
from jobdb.slot_waiting import Holder, WaitingNotices
from jobdb.sql.engine import db_now, retrying
from jobdb.sql.schema import accounts, jobs, run_accounts, runs
from jobdb.sql.store import SqlJobStore
from jobdb.status import HOLDS_SLOT

log = logging.getLogger(__name__)
T = TypeVar("T")


def _insert(engine, table):
    return (postgresql.insert(table) if engine.dialect.name == "postgresql" else sqlite.insert(table))


def lock_accounts(conn, keys, ensure: bool = True) -> None:
    """Make sure each account has its row (`ensure`: nothing deletes them, so once per run is
    enough), then lock them in a fixed order (no deadlock)."""
    if ensure:
        conn.execute(_insert(conn.engine, accounts).values([{"account": k, "next_turn_at": 0.0} for k in keys])
                     .on_conflict_do_nothing())
    conn.execute(select(accounts.c.account).where(accounts.c.account.in_(keys))
                 .order_by(accounts.c.account).with_for_update()).all()


class SqlAccountSlots:
    """This run's share of its backends' accounts, counted over every campaign in the database
    (the `JobSlots` protocol of tasks/accounts/slots.py). `limits`: backend name -> `parallel_jobs`,
    for fair shares; without it, first come first served."""

    def __init__(self, store: SqlJobStore, accounts_by_backend: Mapping[str, str],
                 limits: Optional[Mapping[str, int]] = None):
        self.store = store
        self.accounts = dict(accounts_by_backend)
        self.keys = sorted(set(self.accounts.values()))
        self.limits: Dict[str, int] = {}  # account -> the strictest parallel_jobs this run gives it
        for name, limit in (limits or {}).items():
            if name in self.accounts:
                key = self.accounts[name]
                self.limits[key] = min(int(limit), self.limits.get(key, int(limit)))
        self.notices = WaitingNotices()
        store.accounts.update(self.accounts)
        self._accounts_ensured = False
        self._recorded: Optional[Dict[str, Tuple[int, int]]] = None  # account -> (holding, wants) last written

    def claim(self, decide: Callable[[Dict[str, int]], Tuple[T, Mapping[str, int]]],
              wants: Optional[Mapping[str, int]] = None) -> T:
        """`decide(others)` gets the slots other runs take per backend name (held, or reserved as
        their fair share) and returns (anything, the slots this run holds per backend name after
        its decision); recorded with what this run wants, `anything` returned."""
        engine = self.store.db.engine
        wanted = self._per_account(wants or {})
        previous, self._recorded = self._recorded, None  # a claim that fails writes its record again next time

        def transaction():
            with engine.begin() as conn:
                lock_accounts(conn, self.keys, ensure=not self._accounts_ensured)
                holders = self._holders(conn)
                taken = {key: self._taken(key, wanted.get(key, 0), holders[key]) for key in self.keys}
                result, mine = decide({name: taken[key] for name, key in self.accounts.items()})
                totals = {key: 0 for key in self.keys}
                totals.update(self._per_account(mine))
                record = {k: (n, max(n, min(wanted.get(k, 0), self.limits.get(k, n)))) for k, n in totals.items()}
                if record != previous:  # the same figures as this run's last claim wrote: already there
                    statement = _insert(engine, run_accounts).values(
                        [{"run_id": self.store.run_id, "account": k, "holding": n, "wants": w}
                         for k, (n, w) in record.items()])
                    conn.execute(statement.on_conflict_do_update(
                        index_elements=["run_id", "account"],
                        set_={"holding": statement.excluded.holding, "wants": statement.excluded.wants}))
                return result, totals, taken, holders, record
        result, totals, taken, holders, self._recorded = retrying(transaction, "claiming job slots", log)
        self._accounts_ensured = True
        now = time.monotonic()
        for key in self.keys:
            self.notices.update(key, self.limits.get(key), totals.get(key, 0), wanted.get(key, 0), taken[key],
                                holders[key], now)
        return result

    def waiting_by_backend(self) -> Dict[str, str]:
        """Backend name -> who holds the slots this run waits for there (as of the last claim)."""
        return self.notices.by_backend(self.accounts)

    def waiting_notices(self) -> List[str]:
        """Lines to log since the last call (jobdb/slot_waiting.py)."""
        return self.notices.take_lines()

    def others(self) -> Dict[str, int]:
        with self.store.db.engine.begin() as conn:
            holders = self._holders(conn)
        return {name: sum(h.holding for h in holders[key]) for name, key in self.accounts.items()}

    def _per_account(self, by_name: Mapping[str, int]) -> Dict[str, int]:
        totals: Dict[str, int] = {}
        for name, count in by_name.items():
            if name in self.accounts:
                totals[self.accounts[name]] = totals.get(self.accounts[name], 0) + int(count)
        return totals

    def _taken(self, key: str, my_wants: int, holders: List[Holder]) -> int:
        if key not in self.limits:
            return sum(h.holding for h in holders)
        return others_with_reservations(self.limits[key], my_wants, [(h.holding, h.wants) for h in holders])

    def _holders(self, conn) -> Dict[str, List[Holder]]:
        """Per account, every other holder in a fixed order: each live run (max of what it recorded
        and its active rows), then the active rows of ended runs (or of none) as one holder that
        wants nothing more — their jobs run on the backend until someone sees them end."""
        me = self.store.run_id
        live: Dict[str, Mapping] = {}
        recorded: Dict[Tuple[str, str], Tuple[int, int]] = {}
        active: Dict[Tuple[str, object], int] = {}
        for kind, run, account, n, w, note in conn.execute(self._holders_statement()):
            if kind == "run":
                live[run] = dict(note or {})
                if account is not None:
                    recorded[(account, run)] = (int(n), int(w if w is not None else n))
            else:
                active[(account, run)] = int(n)
        holders: Dict[str, List[Holder]] = {key: [] for key in self.keys}
        for key in self.keys:
            for run in sorted(set(live) - {me}):
                held, wants = recorded.get((key, run), (0, 0))
                holding = max(held, active.get((key, run), 0))
                holders[key].append(Holder(run, holding, max(holding, wants), live[run]))
            orphaned = sum(n for (account, owner), n in active.items()
                           if account == key and owner != me and owner not in live)
            if orphaned:
                holders[key].append(Holder("ended-runs", orphaned, orphaned, {"label": "jobs of runs that ended"}))
        return holders

    def _holders_statement(self):
        """One statement for what `_holders` reads: ("run", run, account, holding, wants, note) for
        each live run (one line per account it recorded, or one with account NULL), and ("rows",
        owner, account, active rows, NULL, NULL) per account and owner, over every campaign."""
        lease = self.store.lock.lease
        recorded = and_(run_accounts.c.run_id == runs.c.run_id, run_accounts.c.account.in_(self.keys))
        live = (select(literal("run").label("kind"), runs.c.run_id, run_accounts.c.account, run_accounts.c.holding,
                       run_accounts.c.wants, runs.c.note)
                .select_from(runs.outerjoin(run_accounts, recorded))
                .where(runs.c.heartbeat_at > db_now(self.store.db.engine) - lease))
        rows = (select(literal("rows"), jobs.c.owner, jobs.c.account, func.count(), null(), null())
                .where(jobs.c.account.in_(self.keys), jobs.c.status.in_(sorted(HOLDS_SLOT)))
                .group_by(jobs.c.account, jobs.c.owner))
        return union_all(live, rows)

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

    The account pacers (tasks/accounts/pacing.py) are per process and keep their file schedule for runs
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
