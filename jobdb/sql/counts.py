"""Rows per status of a campaign, kept in `status_counts` by the writes that change statuses.

A count is changed in the same transaction as the rows (deltas from the statuses the writer read
and wrote), so it never disagrees with the rows. Reading it costs one small query, whatever the
size of the campaign.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, Tuple

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from jobdb.sql.schema import jobs, status_counts


def status_deltas(changes: Iterable[Tuple[str, str]]) -> Dict[str, int]:
    """(old status, new status) pairs -> change of the count per status."""
    deltas: Counter = Counter()
    for old, new in changes:
        if old != new:
            deltas[old] -= 1
            deltas[new] += 1
    return {s: n for s, n in deltas.items() if n}


def apply_deltas(conn, campaign: str, deltas: Dict[str, int]) -> None:
    for status in sorted(deltas):  # a fixed order: two writers never wait on each other in a cycle
        insert = (postgresql.insert if conn.engine.dialect.name == "postgresql" else sqlite.insert)(status_counts)
        conn.execute(insert.values(campaign=campaign, status=status, n=0).on_conflict_do_nothing())
        conn.execute(update(status_counts).where(status_counts.c.campaign == campaign,
                                                 status_counts.c.status == status)
                     .values(n=status_counts.c.n + deltas[status]))


def recount(conn, campaign: str) -> None:
    """Counts from the rows themselves (a new campaign, or an upgrade that adds the table)."""
    conn.execute(status_counts.delete().where(status_counts.c.campaign == campaign))
    counted = conn.execute(select(jobs.c.status, func.count()).where(jobs.c.campaign == campaign)
                           .group_by(jobs.c.status)).all()
    if counted:
        conn.execute(status_counts.insert(), [{"campaign": campaign, "status": s, "n": int(n)} for s, n in counted])


def read_counts(conn, campaign: str) -> Dict[str, int]:
    rows = conn.execute(select(status_counts.c.status, status_counts.c.n)
                        .where(status_counts.c.campaign == campaign, status_counts.c.n > 0))
    return {str(s): int(n) for s, n in rows}
