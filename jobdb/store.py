"""The job store: owns one job DB for a run — its frame, its lock, its sidecars, its persistence.

The flow reads the DB only through `snapshot()` (what the scheduler needs, in plain values) and
the row queries below, and changes it only through `apply()`; `persist()` writes it atomically
at most once per `min_persist_interval` (intents are persisted at once with `force=True`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from jobdb.database import JobDatabase, _plain
from jobdb.lock import JobDbLock
from jobdb.paths import JobDbPaths
from jobdb.persist_throttle import PersistThrottle
from jobdb.status import (
    CREATED, CREATING, ERROR, FAILED, FINISHED, HOLDS_SLOT, NOT_STARTED, POLLED, POSTPROCESS_FAILED,
    RESULTS_FAILED, START_FAILED, TERMINAL, check_transitions,
)

LABEL_COLUMNS = ("tile_id", "year")
# What a retried row forgets of its failed job (its id goes to previous_job_ids, its error to previous_error).
RETRY_RESETS = ("id", "job_marker", "backend_name", "start_time", "running_start_time", "error_message",
                "results_status", "results_error", "postprocess_status", "postprocess_error")


@dataclass(frozen=True)
class PolledJob:
    backend: str
    job_id: str
    status: str
    running_start_time: Optional[str]


@dataclass(frozen=True)
class FailedRow:
    """A row that ended without results, with what resubmission needs to know."""

    status: str
    attempt: int  # jobs created for the row so far
    error: Optional[str]
    previous_error: Optional[str]  # the error that made the flow resubmit it last time
    handled: bool  # its error logs were saved (error) or there is nothing to save (start_failed)
    job_id: Optional[str] = None


@dataclass(frozen=True)
class Snapshot:
    """What the scheduler needs to know about the rows, as plain values (row = index)."""

    rows: int
    waiting: Tuple[int, ...] = ()  # not_started, in row order
    pinned: Mapping[int, str] = field(default_factory=dict)  # waiting rows that name their backend
    creating: Mapping[int, Tuple[Optional[str], Optional[str]]] = field(default_factory=dict)  # (backend, marker)
    to_start: Mapping[int, Tuple[str, str]] = field(default_factory=dict)  # created: (backend, job id)
    polled: Mapping[int, PolledJob] = field(default_factory=dict)
    holding: Mapping[str, int] = field(default_factory=dict)  # rows holding a slot, per backend
    to_download: Mapping[int, Tuple[str, str]] = field(default_factory=dict)  # finished, results not handled
    to_save_logs: Mapping[int, Tuple[str, str]] = field(default_factory=dict)  # error, logs not saved
    counts: Mapping[str, int] = field(default_factory=dict)
    # ended rows (finished / error) whose post-processing hook has not completed:
    # row -> (backend, job id, status, results_status)
    hook_pending: Mapping[int, Tuple[str, str, str, Optional[str]]] = field(default_factory=dict)
    failed: Mapping[int, FailedRow] = field(default_factory=dict)  # error / start_failed rows
    attempts: Mapping[int, int] = field(default_factory=dict)  # waiting rows tried before: tries so far
    earlier_jobs: Mapping[int, str] = field(default_factory=dict)  # rows' previous_job_ids, where set

    @property
    def terminal(self) -> int:
        return sum(n for status, n in self.counts.items() if status in TERMINAL)

    @property
    def all_terminal(self) -> bool:
        return self.terminal == self.rows


class JobStore:
    """One job DB, opened for a run. Use `JobStore.open(path)`."""

    campaign = None  # a file holds one campaign, named by the file (a SQL store names it)

    def __init__(self, db: JobDatabase, min_persist_interval: float = 1.0):
        self._db = db
        self.paths = JobDbPaths.of(db.path)
        self.lock = JobDbLock(db.path)
        self._dirty = False
        self._throttle = PersistThrottle(min_persist_interval)
        # What the snapshot also reports, when the run needs it (hooks configured, max_attempts > 1).
        self.track_hooks = False
        self.track_retries = False
        self.track_downloads = True  # (what the SQL store needs to know to give rows back; unused here)
        self.max_attempts = 1
        self.accounts: Dict[str, str] = {}
        self.lost: frozenset = frozenset()  # rows another run took over: never, one run owns a file

    @classmethod
    def open(cls, job_db: str | Path, min_persist_interval: float = 1.0) -> "JobStore":
        """Load and validate (raises JobDbError); nothing is written."""
        return cls(JobDatabase.open(job_db), min_persist_interval)

    @property
    def persist_count(self) -> int:
        return self._throttle.writes

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def name(self) -> str:
        return str(self._db.path)

    def __len__(self) -> int:
        return len(self._db)

    def reload(self) -> None:
        """Read the DB again from disk (after waiting for its lock: the other run changed it)."""
        self._db = JobDatabase.open(self.path)
        self._dirty = False

    # --- reads --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        df = self._db.df
        status = df["status"]
        backend = df["backend_name"]
        has_id = df["id"].notna()
        has_backend = backend.notna()

        def pairs(mask: pd.Series, *columns: str) -> List[tuple]:
            idx = df.index[mask].tolist()
            return list(zip(idx, *((df.loc[mask, c].tolist() if c in df.columns else [None] * len(idx))
                                   for c in columns)))

        waiting_mask = status == NOT_STARTED
        results = df["results_status"] if "results_status" in df.columns else pd.Series(None, index=df.index, dtype=object)
        marker = df["job_marker"] if "job_marker" in df.columns else pd.Series(None, index=df.index, dtype=object)
        creating = {}
        for i in df.index[status == CREATING].tolist():
            creating[i] = (_str(backend.iat[i]), _str(marker.iat[i]))
        polled = {
            i: PolledJob(str(b), str(j), str(s), _str(t))
            for i, b, j, s, t in pairs(status.isin(POLLED) & has_id & has_backend,
                                       "backend_name", "id", "status", "running_start_time")
        }
        holding = backend[status.isin(HOLDS_SLOT) & has_backend].value_counts().to_dict()
        hook_state = df["postprocess_status"] if "postprocess_status" in df.columns \
            else pd.Series(None, index=df.index, dtype=object)
        hook_pending = {
            i: (str(b), str(j), str(st), _str(r)) for i, b, j, st, r in pairs(
                status.isin([FINISHED, ERROR]) & has_id & has_backend & hook_state.isna(),
                "backend_name", "id", "status", "results_status")
        } if self.track_hooks else {}
        failed = {}
        for i in (df.index[status.isin([ERROR, START_FAILED])].tolist() if self.track_retries else []):
            failed[i] = FailedRow(
                status=str(status.iat[i]), attempt=int(self.value(i, "attempt") or (1 if self.value(i, "id") else 0)),
                error=self.value(i, "error_message"), previous_error=self.value(i, "previous_error"),
                handled=status.iat[i] == START_FAILED or results.iat[i] is not None and results.iat[i] == results.iat[i],
                job_id=self.value(i, "id"),
            )
        attempts = {}
        if "attempt" in df.columns:
            tried = waiting_mask & df["attempt"].notna()
            attempts = {i: int(a) for i, a in pairs(tried, "attempt") if a}
        earlier = df["previous_job_ids"] if "previous_job_ids" in df.columns else None
        earlier_jobs = {i: str(v) for i, v in pairs(earlier.notna(), "previous_job_ids")} if earlier is not None else {}
        return Snapshot(
            rows=len(df),
            attempts=attempts,
            earlier_jobs=earlier_jobs,
            hook_pending=hook_pending,
            failed=failed,
            waiting=tuple(df.index[waiting_mask].tolist()),
            pinned={i: str(b) for i, b in pairs(waiting_mask & has_backend, "backend_name")},
            creating=creating,
            to_start={i: (str(b), str(j)) for i, b, j in pairs((status == CREATED) & has_id & has_backend,
                                                               "backend_name", "id")},
            polled=polled,
            holding={str(k): int(v) for k, v in holding.items()},
            to_download={i: (str(b), str(j)) for i, b, j in pairs(
                (status == FINISHED) & has_id & has_backend & results.isna(), "backend_name", "id")},
            to_save_logs={i: (str(b), str(j)) for i, b, j in pairs(
                (status == ERROR) & has_id & has_backend & results.isna(), "backend_name", "id")},
            counts={str(k): int(v) for k, v in status.value_counts(sort=False).items()},
        )

    def row(self, i: int) -> Dict[str, Any]:
        """Row i as plain python values plus "_row" (what a start_job callback gets)."""
        record = {k: _plain(v) for k, v in self._db.df.iloc[i].to_dict().items()}
        record["_row"] = int(i)
        return record

    def value(self, i: int, column: str) -> Any:
        return _plain(self._db.df.at[i, column]) if column in self._db.df.columns else None

    def label(self, i: int) -> str:
        return row_label(self, i)

    def status_by_backend(self) -> Dict[str, Dict[str, int]]:
        df = self._db.df
        grouped = df.groupby([df["backend_name"].fillna("(none)"), "status"]).size()
        out: Dict[str, Dict[str, int]] = {}
        for (name, status), count in grouped.items():
            out.setdefault(str(name), {})[str(status)] = int(count)
        return out

    def columns(self) -> List[str]:
        return [str(c) for c in self._db.df.columns]

    def named_backends(self) -> Dict[int, str]:
        """Rows that name a backend (for the preflight's check of backend names)."""
        return {int(i): b for i, b in self._db.df["backend_name"].items() if isinstance(b, str) and b}

    def dataframe(self) -> pd.DataFrame:
        """The frame itself, for reports (map, artifacts) only: read it, never change it."""
        return self._db.df

    # --- writes -------------------------------------------------------------------------
    def apply(self, updates: Mapping[int, Mapping[str, Any]]) -> None:
        """Set values of rows; a status change the table does not allow raises IllegalTransition
        (jobdb/status.py) and changes nothing."""
        if updates:
            check_transitions(updates, self._status_of, self.name)
            self._db.apply_updates(updates)
            self._dirty = True

    def persist(self, force: bool = False) -> bool:
        """Write the DB atomically if it changed (throttled unless `force`). True if written."""
        if not self._throttle.due(self._dirty, force):
            return False
        self._db.save()
        self._dirty = False
        self._throttle.wrote()
        return True

    def persist_due_at(self) -> Optional[float]:
        """When (time.monotonic) a throttled write of unsaved changes falls due; None if all is saved.
        The run loop wakes for it, so a long poll interval never leaves job ids only in memory."""
        return self._throttle.due_at(self._dirty)

    def _status_of(self, i: int) -> Optional[str]:
        status = self._db.df["status"]
        return str(status.iat[i]) if isinstance(i, (int, np.integer)) and 0 <= i < len(status) else None

    def retry_failed_downloads(self) -> int:
        """A new run tries again the downloads an earlier run gave up on. Returns how many."""
        df = self._db.df
        if "results_status" not in df.columns:
            return 0
        failed = df["results_status"].astype("string").str.startswith(RESULTS_FAILED).fillna(False)  # also "failed: ..." of 0.1
        rows = df.index[(df["status"] == FINISHED) & failed].tolist()
        self.apply({i: {"results_status": None} for i in rows})
        return len(rows)

    def retry_failed_rows(self) -> int:
        """Rows that failed (error, start_failed, canceled) go back to `not_started` for a new job
        (`--retry-failed`): their job id joins `previous_job_ids`, their error becomes
        `previous_error`, `attempt` stays (the next job is attempt + 1, with its own marker)."""
        df = self._db.df
        updates = {}
        for i in df.index[df["status"].isin(sorted(FAILED))].tolist():
            earlier = [j for j in str(self.value(i, "previous_job_ids") or "").split(",") if j]
            job_id = self.value(i, "id")
            update: Dict[str, Any] = {column: None for column in RETRY_RESETS if column in df.columns}
            update.update(status=NOT_STARTED, previous_error=self.value(i, "error_message"),
                          attempt=self.value(i, "attempt") or (1 if job_id else 0),
                          previous_job_ids=",".join(earlier + ([str(job_id)] if job_id else [])) or None)
            updates[int(i)] = update
        self.apply(updates)
        return len(updates)

    def retry_failed_hooks(self) -> int:
        """Hooks that failed in an earlier run run again (the usual reason for a rerun is a fixed hook)."""
        df = self._db.df
        if "postprocess_status" not in df.columns:
            return 0
        rows = df.index[df["postprocess_status"] == POSTPROCESS_FAILED].tolist()
        self.apply({i: {"postprocess_status": None, "postprocess_error": None} for i in rows})
        return len(rows)

    def rows_with(self, statuses: Iterable[str]) -> List[int]:
        return self._db.df.index[self._db.df["status"].isin(list(statuses))].tolist()


def row_label(store, i: int) -> str:
    """A readable name for row i of any store: its tile id (and year), else its title, else row-<i>."""
    return label_of(lambda column: store.value(i, column), i)


def label_of(value: Callable[[str], Any], i: int) -> str:
    """The one row label (task run names, reports, events), from `value(column)` of row i."""
    parts = [str(v) for v in (_plain(value(c)) for c in LABEL_COLUMNS) if v not in (None, "")]
    title = _plain(value("title"))
    if not parts and title not in (None, ""):
        parts = [str(title)]
    return "-".join(parts) if parts else f"row-{i}"


def _str(value: Any) -> Optional[str]:
    value = _plain(value)
    return None if value is None else str(value)
