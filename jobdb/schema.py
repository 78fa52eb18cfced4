"""The columns openEO's job manager expects and the validation rules (the statuses: jobdb/status.py).

Kept free of I/O so both the storage layer and the database class can use it.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from jobdb.status import NEEDS_JOB_ID, NOT_STARTED, STATUSES, read_stored


# Same as openeo's MultiBackendJobManager._column_requirements (0.53): name -> (dtype, default).
# Usage columns ("cpu", "memory", "duration", ...) are added dynamically by updates, as strings.
OPENEO_COLUMNS: dict[str, tuple[str, object]] = {
    "id": ("str", None),
    "backend_name": ("str", None),
    "status": ("str", NOT_STARTED),
    "start_time": ("str", None),
    "running_start_time": ("str", None),
    "costs": ("float64", None),
}

# The project's own columns (openeo's manager carries them along untouched): name -> meaning.
OWN_COLUMNS: dict[str, str] = {
    "job_marker": "marker in the job title, persisted before POST /jobs (exactly-once creation)",
    "results_status": "'downloaded' or 'failed' once a finished job's results were handled",
    "results_error": "why the last download failed",
    "error_message": "the job's first error log line, or why its start failed",
    "attempt": "how many jobs were created for this row (resubmission)",
    "previous_job_ids": "ids of this row's earlier failed jobs, comma-separated",
    "postprocess_status": "'done' or 'failed: <message>' of the on_job_done/on_job_error hook",
}

GEOMETRY_COLUMN = "geometry"
_log = logging.getLogger(__name__)


def utc_now() -> str:
    """Now as the RFC3339 string openeo's manager writes to `start_time` / `running_start_time`."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

# Cap the number of row numbers listed in one error message.
_MAX_ROWS_IN_MESSAGE = 10


class JobDbError(ValueError):
    """Invalid, unreadable or inconsistent job database (message names file, row, column)."""


class JobDbExistsError(JobDbError, FileExistsError):
    """`create(..., on_exists="error")` on an existing file; also a FileExistsError like openeo raises."""


def dtype_mapping() -> dict[str, str]:
    """`pandas.read_csv(dtype=...)` mapping, equal to openeo's `_column_requirements.dtype_mapping()`."""
    return {name: dtype for name, (dtype, _) in OPENEO_COLUMNS.items()}


def format_rows(rows: Sequence[int]) -> str:
    rows = [int(r) for r in rows]
    shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_IN_MESSAGE])
    more = f" (and {len(rows) - _MAX_ROWS_IN_MESSAGE} more)" if len(rows) > _MAX_ROWS_IN_MESSAGE else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def check_unique_columns(columns: Iterable[object], path: Path | str) -> None:
    seen: set = set()
    dups = []
    for c in columns:
        if c in seen and c not in dups:
            dups.append(c)
        seen.add(c)
    if dups:
        raise JobDbError(f"{path}: duplicated column name(s) {dups}")


def _to_float_column(series: pd.Series, path: Path | str) -> pd.Series:
    """Coerce to float64; openeo writes an all-None "costs" column that parquet reads back as object."""
    if series.dtype == np.float64:
        return series
    converted = pd.to_numeric(series, errors="coerce")
    bad = series.notna() & converted.isna()
    if bad.any():
        raise JobDbError(
            f"{path}: non-numeric value(s) in column {series.name!r} at {format_rows(series.index[bad])}"
        )
    return converted.astype("float64")


def normalize_df(df: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """Return a new frame with RangeIndex and every openeo column present (like openeo's normalize_df)."""
    check_unique_columns(df.columns, path)
    df = df.reset_index(drop=True)
    missing = {c: default for c, (_, default) in OPENEO_COLUMNS.items() if c not in df.columns}
    if missing:
        df = df.assign(**missing)
    df["costs"] = _to_float_column(df["costs"], path)
    return read_statuses(df, path)


def read_statuses(df: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """Statuses openeo's manager or a backend wrote that are not ours, read as ours (jobdb/status.py
    says which); a row with an unknown status and no job id is left for `validate_df` to refuse."""
    status = df["status"]
    foreign = ~status.isin(STATUSES) & status.notna()
    if not foreign.any():
        return df
    has_id = has_value(df["id"])
    read = {i: read_stored(status.iat[i], bool(has_id.iat[i])) for i in df.index[foreign]}
    read = {i: s for i, s in read.items() if s is not None}
    if read:
        df = df.copy()
        for original in sorted({str(status.iat[i]) for i in read}):
            rows = [i for i in read if status.iat[i] == original]
            _log.warning("%s: status %r (not one of ours) at %s read as %r", path, original, format_rows(rows),
                         read[rows[0]])
        df.loc[list(read), "status"] = pd.Series(read, dtype=object)
    return df


def has_value(series: pd.Series) -> pd.Series:
    """Boolean mask: cell holds a non-empty value (NaN/None/"" count as empty)."""
    mask = series.notna()
    if series.dtype == object:
        mask &= series.map(lambda v: not (isinstance(v, str) and v.strip() == ""))
    return mask


def validate_df(df: pd.DataFrame, path: Path | str, required_columns: Iterable[str] = ()) -> None:
    """Raise JobDbError on the first rule broken; `df` must already be normalized."""
    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        raise JobDbError(f"{path}: missing required column(s) {missing}")

    status = df["status"]
    bad = ~status.isin(STATUSES)
    if bad.any():
        values = sorted({repr(v) for v in status[bad]})
        raise JobDbError(
            f"{path}: invalid value(s) {', '.join(values)} in column 'status' at {format_rows(df.index[bad])};"
            f" allowed: {', '.join(STATUSES)}"
        )

    has_id = has_value(df["id"])
    bad = (status == NOT_STARTED) & has_id
    if bad.any():
        raise JobDbError(f"{path}: column 'id' is set on not_started {format_rows(df.index[bad])}")
    bad = status.isin(NEEDS_JOB_ID) & ~has_id
    if bad.any():
        raise JobDbError(f"{path}: active status without a job 'id' at {format_rows(df.index[bad])}")


def validate_updates(df: pd.DataFrame, updates: Mapping[int, Mapping[str, object]], path: Path | str) -> None:
    """Reject updates to rows that do not exist and unknown status values, before touching anything."""
    n = len(df)
    unknown = [r for r in updates if not (isinstance(r, (int, np.integer)) and not isinstance(r, bool) and 0 <= r < n)]
    if unknown:
        raise JobDbError(f"{path}: update for unknown row(s) {unknown[:_MAX_ROWS_IN_MESSAGE]} (db has {n} rows)")
    bad = [r for r, u in updates.items() if "status" in u and u["status"] not in STATUSES]
    if bad:
        raise JobDbError(
            f"{path}: invalid status {updates[bad[0]]['status']!r} in update for {format_rows(bad)}"
        )
