"""The one interface the flow uses for a campaign's rows, whatever holds them.

`JobStore` (jobdb/store.py: a CSV / Parquet / GeoParquet file, its flock lock, atomic whole-file
writes) and `SqlJobStore` (jobdb/sql/store.py: one campaign in PostgreSQL or SQLite, row claims
with leases, writes of changed rows only) both implement it; `open_store` picks one from the
`job_db` string (jobdb/location.py lists the forms that work).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol, runtime_checkable

import pandas as pd

from jobdb.location import check_no_password, locate
from jobdb.paths import JobDbPaths
from jobdb.store import Snapshot


@runtime_checkable
class CampaignStore(Protocol):
    paths: JobDbPaths  # markers, artifact keys, maps, default results folder
    lock: Any  # acquire(flow_run_id, wait_seconds, on_wait) / release(): the file's lock, or the run's lease
    name: str  # what reports call it (a path, or the database without credentials + campaign)
    campaign: Optional[str]  # the campaign's name in a SQL database (the STAC collection id); None for a file
    persist_count: int
    track_hooks: bool
    track_retries: bool
    track_downloads: bool
    max_attempts: int
    accounts: Dict[str, str]  # backend name -> account identity
    lost: set  # rows another run took over (SQL); never filled for a file

    @property
    def path(self) -> Path: ...
    def __len__(self) -> int: ...
    def reload(self) -> None: ...
    def snapshot(self) -> Snapshot: ...
    def row(self, i: int) -> Dict[str, Any]: ...
    def value(self, i: int, column: str) -> Any: ...
    def label(self, i: int) -> str: ...
    def status_by_backend(self) -> Dict[str, Dict[str, int]]: ...
    def dataframe(self) -> pd.DataFrame: ...
    def columns(self) -> List[str]: ...
    def named_backends(self) -> Dict[int, str]: ...
    def apply(self, updates: Mapping[int, Mapping[str, Any]]) -> None: ...
    def persist(self, force: bool = False) -> bool: ...
    def persist_due_at(self) -> Optional[float]: ...
    def retry_failed_downloads(self) -> int: ...
    def retry_failed_rows(self) -> int: ...
    def retry_failed_hooks(self) -> int: ...
    def rows_with(self, statuses: Iterable[str]) -> List[int]: ...


def open_store(job_db: str, campaign: Optional[str] = None, results_root: Optional[str] = None) -> CampaignStore:
    """The store for `job_db` (a file path or a SQL URL). Raises JobDbError; writes nothing."""
    location = locate(job_db)
    if location.kind == "sql":
        from jobdb.sql.store import SqlJobStore

        check_no_password(location.target)
        return SqlJobStore.open(location.target, campaign, Path(results_root) if results_root else None)
    from jobdb.schema import JobDbError
    from jobdb.store import JobStore

    if campaign:
        raise JobDbError(f"{job_db}: campaign={campaign!r} names a campaign inside a SQL database; "
                         "a job DB file holds one campaign (leave campaign out)")
    return JobStore.open(location.target)
