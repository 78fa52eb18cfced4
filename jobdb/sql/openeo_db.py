"""openeo's `JobDatabaseInterface` on a SQL campaign, so openeo's own `MultiBackendJobManager` can
run it (`manager.run_jobs(job_db=SqlJobDatabase(url, "eu27"), start_job=...)`).

Frames are indexed by row (`row_index`), as openeo's file databases are by position. `persist`
merges like openeo's: missing values in the frame never overwrite stored ones. It writes without
claims: openeo's manager is one process, so do not point it at a campaign that runs of this
project are working at the same time.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Union

import pandas as pd
from openeo.extra.job_management import JobDatabaseInterface
from sqlalchemy import select, update

from jobdb.schema import GEOMETRY_COLUMN, JobDbError
from jobdb.sql.campaign import SqlDatabase
from jobdb.sql.counts import apply_deltas, status_deltas
from jobdb.sql.records import record_of, rows_to_frame, table_values
from jobdb.sql.schema import FIXED_COLUMNS, jobs


class SqlJobDatabase(JobDatabaseInterface):
    def __init__(self, url: str, campaign: Optional[str] = None):
        self.db = SqlDatabase.open(url)
        self.campaign = self.db.resolve_campaign(campaign)

    def exists(self) -> bool:
        return self.campaign in self.db.campaign_names()

    def count_by_status(self, statuses: Iterable[str] = ()) -> dict:
        counts = self.db.counts(self.campaign)
        wanted = set(statuses)
        return {s: n for s, n in counts.items() if not wanted or s in wanted}

    def _frame(self, where, limit: Optional[int] = None) -> pd.DataFrame:
        info = self.db.info(self.campaign)
        query = select(jobs).where(jobs.c.campaign == self.campaign, where).order_by(jobs.c.row_index)
        if limit is not None:
            query = query.limit(limit)
        with self.db.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        df = rows_to_frame(rows, info.columns, info.crs)
        df.index = pd.Index([int(r["row_index"]) for r in rows])
        return df

    def get_by_status(self, statuses: List[str], max=None) -> pd.DataFrame:  # noqa: A002 - openeo's name
        return self._frame(jobs.c.status.in_(list(statuses)), max)

    def get_by_indices(self, indices: Iterable[Union[int, str]]) -> pd.DataFrame:
        return self._frame(jobs.c.row_index.in_([int(i) for i in indices]))

    def persist(self, df: pd.DataFrame) -> None:
        if df is None or not len(df):
            return
        rows = [int(i) for i in df.index]
        with self.db.engine.begin() as conn:
            stored = {int(r["row_index"]): record_of(r) for r in conn.execute(
                select(jobs).where(jobs.c.campaign == self.campaign, jobs.c.row_index.in_(rows))).mappings()}
            unknown = sorted(set(rows) - set(stored))
            if unknown:
                raise JobDbError(f"{self.db.name}: persist with unknown row indices {unknown[:10]}")
            changes = []
            for i, values in zip(rows, df.drop(columns=[GEOMETRY_COLUMN, "_row"], errors="ignore").to_dict("records")):
                record = stored[i]
                old = (record["backend_name"], record["status"])
                record.update({k: v for k, v in values.items() if not _missing(v)})
                new = table_values(record)
                conn.execute(update(jobs).where(jobs.c.campaign == self.campaign, jobs.c.row_index == i)
                             .values({c: new[c] for c in (*FIXED_COLUMNS, "extra")}))
                changes.append((old, (new["backend_name"], new["status"])))
            apply_deltas(conn, self.campaign, status_deltas(changes))


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
