"""The SQL campaign store: what `JobStore` is for a file, for one campaign in PostgreSQL / SQLite.

A run keeps in memory only the rows it holds (claimed): its waiting batch and its rows with work
left. Each `snapshot()` tops the waiting batch up and adopts rows whose owner's lease ended, in one
claim statement each, and reads the campaign's counts by GROUP BY; `persist()` writes only the
changed rows, each guarded by `owner = this run` (a row another run adopted meanwhile is dropped,
never overwritten), and gives back rows with no work left. Nothing reads or writes the whole
campaign on a cycle; `dataframe()` (reports) does, off the cycle.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import pandas as pd
from sqlalchemy import select, update

from jobdb.paths import JobDbPaths
from jobdb.persist_throttle import PersistThrottle
from jobdb.schema import JobDbError
from jobdb.sql.batch import write_held_rows
from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.claims import RunLease
from jobdb.sql.counts import read_counts
from jobdb.sql.engine import retrying
from jobdb.sql.records import check_rows_known, decode_geometry, record_of, table_values
from jobdb.sql.schema import FIXED_COLUMNS, jobs
from jobdb.sql.view import HeldView, WorkRules, adoptable_sql, needs_work
from jobdb.status import FINISHED, NOT_STARTED, RESULTS_FAILED, STATUSES, TERMINAL, check_transitions
from jobdb.store import Snapshot, row_label

log = logging.getLogger(__name__)
WAITING_BATCH = 20  # waiting rows a run holds at least room for (run_jobs raises it to its slots + created ahead)
ADOPT_BATCH = 1000  # rows of ended runs adopted at most per claim


def default_results_root(campaign: str) -> Path:
    """Where a SQL campaign's results go without `root_dir`: ./<campaign>/ in the working directory."""
    return Path.cwd() / campaign


@dataclass(frozen=True)
class CampaignPaths(JobDbPaths):
    """Files of a SQL campaign: maps and default results under `<root>/`; markers from the
    database and campaign name, so every machine's runs make the same markers."""

    campaign_hash: str = ""

    @property
    def db_hash(self) -> str:
        return self.campaign_hash

    @property
    def default_results_root(self) -> Path:
        return self.db.parent


class SqlJobStore:
    """One campaign of a SQL database, opened for a run. Use `SqlJobStore.open(url, campaign)`."""

    def __init__(self, db: SqlDatabase, campaign: str, results_root: Optional[Path] = None,
                 run_id: Optional[str] = None, min_persist_interval: float = 1.0):
        self.db = db
        self.campaign = campaign
        info = db.info(campaign)
        self.total = info.rows
        self._has_geometry = "geometry" in info.columns
        root = Path(results_root or default_results_root(campaign)).resolve()
        self.paths = CampaignPaths(root / campaign, db.marker_prefix(campaign))
        self.name = f"{db.name}#{campaign}"
        self.lock = RunLease(db, campaign, run_id or uuid.uuid4().hex[:16])
        self._throttle = PersistThrottle(min_persist_interval)
        self.track_hooks = False
        self.track_retries = False
        self.track_downloads = True
        self.max_attempts = 1
        self.waiting_batch = WAITING_BATCH
        self.accounts: Dict[str, str] = {}  # backend name -> account identity (for counting slots)
        self.lost: set = set()  # rows another run adopted from this one (its lease had ended)
        self._rows: Dict[int, Dict[str, Any]] = {}
        self._stored: Dict[int, tuple] = {}  # each held row's (backend, status) as the database has it
        self._dirty: set = set()
        self._view = HeldView()  # the snapshot of the held rows, kept as they change
        self._next_adopt = 0.0
        self._counts: Dict[str, int] = {}

    @property
    def persist_count(self) -> int:
        return self._throttle.writes

    @classmethod
    def open(cls, url: str, campaign: Optional[str], results_root: Optional[Path] = None) -> "SqlJobStore":
        db = SqlDatabase.open(url)
        return cls(db, db.resolve_campaign(campaign), results_root)

    @property
    def path(self) -> Path:
        return self.paths.db

    @property
    def run_id(self) -> str:
        return self.lock.run_id

    @property
    def rules(self) -> WorkRules:
        return WorkRules(self.track_downloads, self.track_hooks, self.max_attempts if self.track_retries else 1)

    def __len__(self) -> int:
        return self.total

    def reload(self) -> None:
        """Nothing to reload: the rows this run holds are the database's."""

    # --- reads --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The held rows' snapshot and the campaign's counts; tops the waiting batch up and adopts
        rows of ended runs on the same connection (on PostgreSQL each statement commits on its own:
        no BEGIN/COMMIT round trips; the counts were never read in the claims' transaction)."""
        if self.lock.is_held:
            self._view.refresh(self._rows, self.track_hooks, self.track_retries)
            self._counts, claimed, adopted = retrying(self._count_and_claim, "claiming rows", log)
            if adopted:
                self._next_adopt = time.monotonic() + min(5.0, self.lock.lease / 4)
            self._take(claimed)
        else:
            self._counts = retrying(lambda: self.db.counts(self.campaign), "counting rows", log)
        return self._view.snapshot(self._rows, self._counts, self.total, self.track_hooks, self.track_retries)

    def _count_and_claim(self) -> Tuple[Dict[str, int], List[Mapping[str, Any]], bool]:
        with self.db.autocommit.begin() as conn:  # each claim is one statement: none waits for another
            counts = read_counts(conn, self.campaign)
            claimed: List[Mapping[str, Any]] = []
            waiting_held = self._view.waiting_count
            if waiting_held < self.waiting_batch and counts.get(NOT_STARTED, 0) > waiting_held:
                claimed += self.lock.claim_in(conn, jobs.c.status == NOT_STARTED, self.waiting_batch - waiting_held)
            everything_ended = sum(n for s, n in counts.items() if s in TERMINAL) == self.total
            adopt = time.monotonic() >= self._next_adopt or everything_ended
            if adopt:
                adopted: List[Mapping[str, Any]] = []
                for where in adoptable_sql(self.rules):
                    adopted += self.lock.claim_in(conn, where, ADOPT_BATCH - len(adopted))
                claimed += adopted
            return counts, claimed, adopt

    def _take(self, claimed: List[Mapping[str, Any]]) -> None:
        for db_row in claimed:
            i = int(db_row["row_index"])
            if i in self._rows:
                continue
            self._rows[i] = record_of(db_row)
            self._view.touch(i)
            self._stored[i] = (db_row["backend_name"], db_row["status"])
            if db_row["status"] != NOT_STARTED:
                log.info("job store: row %s (%s) adopted from an ended run", i, db_row["status"])
            backend = db_row.get("backend_name")
            if backend in self.accounts and db_row.get("account") != self.accounts[backend]:
                self._dirty.add(i)  # count its slot under this run's account identity

    def _record(self, i: int) -> Dict[str, Any]:
        if i in self._rows:
            return self._rows[i]
        with self.db.engine.connect() as conn:
            db_row = conn.execute(select(jobs).where(jobs.c.campaign == self.campaign, jobs.c.row_index == int(i))
                                  ).mappings().first()
        if db_row is None:
            raise JobDbError(f"{self.name}: no row {i}")
        return record_of(db_row)

    def row(self, i: int) -> Dict[str, Any]:
        record = {k: decode_geometry(v) for k, v in self._record(i).items()}
        if not self._has_geometry:
            record.pop("geometry", None)
        record["_row"] = int(i)
        return record

    def value(self, i: int, column: str) -> Any:
        value = self._record(i).get(column)
        return decode_geometry(value) if column == "geometry" else value

    def label(self, i: int) -> str:
        return row_label(self, i)

    def status_by_backend(self) -> Dict[str, Dict[str, int]]:
        """Rows per backend and status, from the counts the writes keep (one small query)."""
        return retrying(lambda: self.db.counts_by_backend(self.campaign), "counting rows", log)

    def dataframe(self) -> pd.DataFrame:
        """The whole campaign (reports, maps): a full read, so never on the cycle's path."""
        return retrying(lambda: self.db.export(self.campaign), "reading the campaign", log)

    def columns(self) -> List[str]:
        return self.db.info(self.campaign).columns

    def named_backends(self) -> Dict[int, str]:
        """Rows that name a backend (for the preflight's check of backend names)."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.row_index, jobs.c.backend_name)
                                .where(jobs.c.campaign == self.campaign, jobs.c.backend_name.isnot(None)))
            return {int(i): str(b) for i, b in rows}

    # --- writes -------------------------------------------------------------------------
    def apply(self, updates: Mapping[int, Mapping[str, Any]]) -> None:
        if not updates:
            return
        check_rows_known(updates, self.total, self.name)
        bad = [r for r, u in updates.items() if "status" in u and u["status"] not in STATUSES]
        if bad:
            raise JobDbError(f"{self.name}: invalid status {updates[bad[0]]['status']!r} in update for row {bad[0]}")
        missing = [int(r) for r in updates if int(r) not in self._rows]
        if missing:  # rows this run does not hold: claim them first, or leave them to their owner
            self._take(self.lock.claim(jobs.c.row_index.in_(missing), len(missing)))
        check_transitions(updates, lambda r: self._rows[int(r)]["status"] if int(r) in self._rows else None,
                          self.name)
        for row, values in updates.items():
            if int(row) not in self._rows:
                log.warning("job store: row %s is held by another run; update %s not applied", row, dict(values))
                continue
            self._rows[int(row)].update(values)
            self._view.touch(int(row))
            self._dirty.add(int(row))

    def persist_due_at(self) -> Optional[float]:
        """When (time.monotonic) a throttled write of the changed rows falls due; None if none changed."""
        return self._throttle.due_at(bool(self._dirty))

    def persist(self, force: bool = False) -> bool:
        """Write the changed rows (throttled unless `force`); give back rows with no work left."""
        if not self._throttle.due(bool(self._dirty), force):
            return False
        dirty = sorted(self._dirty)
        rules = self.rules
        params = []
        for i in dirty:
            record = self._rows[i]
            values = table_values(record)
            values["account"] = self.accounts.get(record.get("backend_name")) if record.get("backend_name") else None
            values["owner"] = self.run_id if needs_work(record, rules) else None
            params.append({**values, "b_row": i})
        columns = (*FIXED_COLUMNS, "extra", "account", "owner")

        def write() -> set:  # rows and counts: one statement on PostgreSQL, whatever the number of rows
            with self.db.autocommit.begin() as conn:
                return write_held_rows(conn, self.campaign, self.run_id, params, columns, self._stored)
        held = retrying(write, "writing rows", log)
        for i in dirty:
            self._view.touch(i)
            if i in held:
                self._stored[i] = (self._rows[i].get("backend_name"), self._rows[i]["status"])
            if i not in held:
                self.lost.add(i)
                self._rows.pop(i, None)
                self._stored.pop(i, None)
                log.warning("job store: row %s was adopted by another run (this run's lease had ended); "
                            "leaving it to that run", i)
            elif not needs_work(self._rows[i], rules):
                self._rows.pop(i)
                self._stored.pop(i, None)
        self._dirty.clear()
        self._throttle.wrote()
        return True

    def retry_failed_downloads(self) -> int:
        """A new run tries again the downloads an earlier run gave up on (rows nobody holds)."""
        statement = (update(jobs).where(jobs.c.campaign == self.campaign, jobs.c.status == FINISHED,
                                        jobs.c.results_status.like(f"{RESULTS_FAILED}%"), self.lock.claimable())
                     .values(results_status=None))

        def write() -> int:
            with self.db.engine.begin() as conn:
                return conn.execute(statement).rowcount
        return retrying(write, "resetting failed downloads", log)

    def retry_failed_rows(self) -> int:
        from jobdb.sql.retries import retry_failed_rows

        return retry_failed_rows(self)

    def retry_failed_hooks(self) -> int:
        from jobdb.sql.retries import retry_failed_hooks

        return retry_failed_hooks(self)

    def rows_with(self, statuses: Iterable[str]) -> List[int]:
        with self.db.engine.connect() as conn:
            return sorted(conn.execute(select(jobs.c.row_index).where(
                jobs.c.campaign == self.campaign, jobs.c.status.in_(list(statuses)))).scalars())
