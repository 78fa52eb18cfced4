"""`--retry-failed` and failed hooks on a SQL campaign: the same rules as the file store
(jobdb/store.py), on the rows no live run holds, in one transaction with the counts per status."""
from __future__ import annotations

import logging
from typing import Any, Dict

from sqlalchemy import bindparam, select, update

from jobdb.sql.counts import apply_deltas, status_deltas
from jobdb.sql.engine import retrying
from jobdb.sql.schema import jobs
from jobdb.status import FAILED, NOT_STARTED, POSTPROCESS_FAILED
from jobdb.store import RETRY_RESETS

log = logging.getLogger(__name__)


def retry_failed_rows(store) -> int:
    """Failed rows (error, start_failed, canceled) back to `not_started`, keeping their history:
    the job id joins `previous_job_ids`, the error becomes `previous_error`, `attempt` stays."""
    c = jobs.c
    chosen = select(c.row_index, c.status, c.backend_name, c.id, c.attempt, c.error_message, c.previous_job_ids).where(
        c.campaign == store.campaign, c.status.in_(sorted(FAILED)), store.lock.claimable())
    if store.db.engine.dialect.name == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)

    def write() -> int:
        with store.db.engine.begin() as conn:
            rows = conn.execute(chosen).all()
            if not rows:
                return 0
            values = [_retried(r) for r in rows]
            conn.execute(update(jobs).where(c.campaign == store.campaign, c.row_index == bindparam("_row"))
                         .values({name: bindparam(name) for name in values[0] if name != "_row"}), values)
            apply_deltas(conn, store.campaign, status_deltas(
                ((r.backend_name, r.status), (None, NOT_STARTED)) for r in rows))  # backend_name is reset
            return len(rows)
    return retrying(write, "putting failed rows back", log)


def _retried(r) -> Dict[str, Any]:
    earlier = [j for j in str(r.previous_job_ids or "").split(",") if j]
    value: Dict[str, Any] = {column: None for column in RETRY_RESETS}
    value.update(_row=r.row_index, status=NOT_STARTED, previous_error=r.error_message, account=None,
                 attempt=r.attempt or (1 if r.id else 0),
                 previous_job_ids=",".join(earlier + ([str(r.id)] if r.id else [])) or None)
    return value


def retry_failed_hooks(store) -> int:
    """Hooks that failed in an earlier run run again (the usual reason for a rerun is a fixed hook)."""
    statement = (update(jobs).where(jobs.c.campaign == store.campaign, jobs.c.postprocess_status == POSTPROCESS_FAILED,
                                    store.lock.claimable())
                 .values(postprocess_status=None, postprocess_error=None))

    def write() -> int:
        with store.db.engine.begin() as conn:
            return conn.execute(statement).rowcount
    return retrying(write, "resetting failed hooks", log)
