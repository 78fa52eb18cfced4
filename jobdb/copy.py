"""`python -m jobdb copy SRC DST [--campaign NAME]`: move a campaign between files and SQL.

SRC and DST are each a job DB file — CSV, Parquet or GeoParquet, a local path or an fsspec URL
(`s3://bucket/jobs.parquet`) — or a SQL URL (`postgresql://…`, `sqlite:///…`). Every column is
kept, the geometry and its CRS included; an exported file is what openeo's `get_job_db()` reads.
Into SQL, the campaign is `--campaign` (default: the file's stem) and must not exist yet; out of
SQL, `--campaign` may be left out when the database holds one. A file is written atomically
(temp + rename, or one upload) and never over an existing one unless `--force`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import Optional, Tuple

import pandas as pd

from jobdb.database import JobDatabase
from jobdb.schema import JobDbError, normalize_df, validate_df
from jobdb.storage import db_format, write_db_atomic

SQL_PREFIXES = ("postgresql", "postgres", "sqlite")


def is_sql_url(target: str) -> bool:
    return target.split("://", 1)[0].split("+")[0].lower() in SQL_PREFIXES and "://" in target


def _remote(target: str) -> bool:
    return "://" in target and not target.startswith("file://")


def _local(target: str) -> Path:
    return Path(target[len("file://"):] if target.startswith("file://") else target)


def read_any(source: str, campaign: Optional[str]) -> Tuple[pd.DataFrame, str]:
    """The job DB at `source` as a frame, and the campaign name it suggests."""
    if is_sql_url(source):
        from jobdb.sql.campaign import SqlDatabase

        db = SqlDatabase.open(source)
        name = db.resolve_campaign(campaign)
        return db.export(name), name
    name = PurePosixPath(source.split("://", 1)[-1]).stem
    db_format(Path(source))
    if not _remote(source):
        return JobDatabase.open(_local(source)).df, campaign or name
    import fsspec

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / PurePosixPath(source).name
        try:
            fsspec.open(source).fs.get(source, str(local))
        except Exception as exc:  # noqa: BLE001 - any fetch failure is one line
            raise JobDbError(f"{source}: cannot read: {exc}") from None
        return JobDatabase.open(local).df, campaign or name


def write_any(df: pd.DataFrame, target: str, campaign: str, force: bool) -> str:
    """Write `df` to `target`; returns what was written (for the one-line report)."""
    if is_sql_url(target):
        from jobdb.sql.campaign import SqlDatabase

        SqlDatabase.open(target, create=True).create_campaign(campaign, df, source=target)
        return f"{SqlDatabase.open(target).name} campaign {campaign!r}"
    df = normalize_df(df, target)
    validate_df(df, target)
    db_format(Path(target))
    if not _remote(target):
        path = _local(target)
        if path.exists() and not force:
            raise JobDbError(f"{path}: already exists (add --force to replace it)")
        write_db_atomic(path, df)
        return str(path)
    import fsspec

    fs = fsspec.open(target).fs
    if fs.exists(target) and not force:
        raise JobDbError(f"{target}: already exists (add --force to replace it)")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / PurePosixPath(target).name
        write_db_atomic(local, df)
        fs.put(str(local), target)  # one upload: readers see the old object or the whole new one
    return target


def copy(source: str, target: str, campaign: Optional[str] = None, force: bool = False) -> str:
    df, name = read_any(source, campaign)
    where = write_any(df, target, name, force)
    return f"copied {len(df)} rows to {where}"

