"""The job database: an in-memory frame, one row per job, persisted whole and atomically.

Row identity is the row position (index 0..n-1); rows are never reordered or dropped.
Implements openeo's JobDatabaseInterface, so a `MultiBackendJobManager` can use it directly.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from openeo.extra.job_management import JobDatabaseInterface

from jobdb.schema import (
    JobDbError,
    JobDbExistsError,
    normalize_df,
    validate_df,
    validate_updates,
)
from jobdb.storage import db_format, read_db, remove_stale_temp_files, write_db_atomic

_log = logging.getLogger(__name__)

PathLike = str | os.PathLike


class JobDatabase(JobDatabaseInterface):
    """Use `JobDatabase.open(path)` or `JobDatabase.create(path, df)`, not the constructor."""

    def __init__(self, path: PathLike, df: pd.DataFrame):
        super().__init__()
        self.path = Path(path)
        self.df = df

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, rows={len(self.df)})"

    def __len__(self) -> int:
        return len(self.df)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: PathLike, required_columns: Iterable[str] = ()) -> "JobDatabase":
        """Load and validate an existing db file. Raises JobDbError; never writes to disk."""
        path = Path(path)
        df = read_db(path)
        df = normalize_df(df, path)
        validate_df(df, path, required_columns)
        return cls(path, df)

    @classmethod
    def create(cls, path: PathLike, df: pd.DataFrame, *, on_exists: str = "error") -> "JobDatabase":
        """Normalize (add openeo columns), validate and persist `df` as a new db at `path`.

        on_exists: "error" raises JobDbExistsError (a JobDbError and FileExistsError);
        "skip" opens the existing db and ignores `df` (like openeo's create_job_db).
        """
        path = Path(path)
        if on_exists not in ("error", "skip"):
            raise JobDbError(f"{path}: invalid on_exists={on_exists!r} (use 'error' or 'skip')")
        db_format(path)  # reject unknown extensions before anything else
        if path.exists():
            if on_exists == "skip":
                return cls.open(path)
            raise JobDbExistsError(f"{path}: job database already exists")
        df = normalize_df(df, path)
        validate_df(df, path)
        db = cls(path, df)
        db.save()
        return db

    # -- queries (JobDatabaseInterface) ---------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def count_by_status(self, statuses: Iterable[str] = ()) -> dict[str, int]:
        counts = {str(k): int(v) for k, v in self.df["status"].value_counts(sort=False).items()}
        wanted = set(statuses)
        if wanted:
            counts = {k: v for k, v in counts.items() if k in wanted}
        return counts

    def get_by_status(self, statuses: Iterable[str], max: int | None = None) -> pd.DataFrame:
        selected = self.df[self.df["status"].isin(list(statuses))]
        if max is not None:
            selected = selected.head(max)
        return selected.copy()

    def get_by_indices(self, indices: Iterable[int | str]) -> pd.DataFrame:
        # Like openeo: unknown indices are ignored with a warning. Order of first appearance kept.
        wanted = list(dict.fromkeys(indices))
        known = [i for i in wanted if i in self.df.index]
        if len(known) != len(wanted):
            _log.warning(f"{self.path}: ignoring unknown row indices {sorted(set(wanted) - set(known), key=str)}")
        return self.df.loc[known].copy()

    def rows(self, statuses: Iterable[str] | None, max: int | None = None) -> list[dict]:
        """Rows with given statuses (None: all) as plain python dicts, each with "_row" (its index)."""
        df = self.df if statuses is None else self.df[self.df["status"].isin(list(statuses))]
        if max is not None:
            df = df.head(max)
        records = pd.DataFrame(df).to_dict("records")
        out = []
        for row, rec in zip(df.index, records):
            d = {k: _plain(v) for k, v in rec.items()}
            d["_row"] = int(row)
            out.append(d)
        return out

    # -- updates --------------------------------------------------------------------------------

    def apply_updates(self, updates: Mapping[int, Mapping[str, object]]) -> None:
        """Set values in memory: {row: {column: value}}. New columns are created as needed.

        All rows are checked first, so an invalid update changes nothing.
        """
        if not updates:
            return
        validate_updates(self.df, updates, self.path)
        by_column: dict[str, tuple[list[int], list[object]]] = {}
        for row, values in updates.items():
            for col, value in values.items():
                rows, vals = by_column.setdefault(col, ([], []))
                rows.append(int(row))
                vals.append(value)
        for col, (rows, vals) in by_column.items():
            self._set_column_values(col, rows, vals)

    def _set_column_values(self, col: str, rows: list[int], vals: list[object]) -> None:
        df = self.df
        if col not in df.columns:
            # costs stays numeric for openeo; everything else starts as object (None, not NaN)
            df[col] = np.nan if col == "costs" else pd.Series([None] * len(df), index=df.index, dtype=object)
        series = df[col]
        if getattr(series.dtype, "name", "") == "geometry":
            df.loc[rows, col] = pd.Series(vals, index=rows, dtype=object)
            return
        if col == "costs":
            try:
                new = np.array([np.nan if _is_missing(v) else float(v) for v in vals], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise JobDbError(f"{self.path}: non-numeric 'costs' in update ({e})") from e
            arr = series.to_numpy(dtype=np.float64, copy=True)
            arr[rows] = new
            df[col] = arr
            return
        if series.dtype != object:
            new = np.asarray(vals)
            if new.dtype != object and new.dtype.kind in "biuf" and np.can_cast(new.dtype, series.dtype, "same_kind"):
                arr = series.to_numpy(copy=True)
                arr[rows] = new
                df[col] = arr
                return
        # Strings, None, mixed: object column (e.g. usage "1234 cpu-seconds" into an all-NaN float column)
        arr = series.to_numpy(dtype=object, copy=True)
        for r, v in zip(rows, vals):
            arr[r] = v
        df[col] = pd.Series(arr, index=df.index, dtype=object)

    def persist(self, df: pd.DataFrame | None = None) -> None:
        """openeo interface: merge `df` (rows by index) into memory, then write the whole db once.

        Like openeo's `DataFrame.update`-based merge, missing values (NaN/None) in `df` do not
        overwrite existing values; unknown row indices raise JobDbError.
        """
        if df is not None and len(df):
            updates: dict[int, dict[str, object]] = {}
            for col in df.columns:
                if col == "_row":
                    continue
                series = df[col]
                mask = series.notna().to_numpy()
                for idx, value in zip(series.index[mask], series[mask].tolist()):
                    updates.setdefault(idx, {})[col] = value
            unknown = set(df.index) - set(self.df.index)
            if unknown:
                raise JobDbError(f"{self.path}: persist with unknown row indices {sorted(unknown, key=str)[:10]}")
            self.apply_updates(updates)
        self.save()

    def save(self) -> None:
        """Atomically write the in-memory frame to `path`; then drop temp files of dead writers."""
        write_db_atomic(self.path, self.df)
        remove_stale_temp_files(self.path)


def load_job_db(path: PathLike, required_columns: Iterable[str] = ()) -> JobDatabase:
    return JobDatabase.open(path, required_columns=required_columns)


def _is_missing(v: object) -> bool:
    if v is None or v is pd.NaT or v is pd.NA:
        return True
    return isinstance(v, float) and math.isnan(v)


def _plain(v: object) -> object:
    """numpy scalars -> python, NaN/NaT/NA -> None; shapely geometries and other objects unchanged."""
    if isinstance(v, np.generic):
        v = v.item()
    if _is_missing(v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    return v
