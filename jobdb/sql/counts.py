"""Rows per backend × status of a campaign, kept in `status_counts` by the writes that change them.

A count is changed in the same transaction as the rows (deltas from the (backend, status) the
writer read and wrote), so it never disagrees with the rows. Reading it costs one small query,
whatever the size of the campaign: the cycle's counts per status and the progress display's table
per backend both come from here, never from a GROUP BY over the campaign's rows.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, Optional, Tuple

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from jobdb.sql.schema import NO_BACKEND, status_counts

Key = Tuple[Optional[str], str]  # (backend name or None, status)


def status_deltas(changes: Iterable[Tuple[Key, Key]]) -> Dict[Tuple[str, str], int]:
    """((old backend, old status), (new backend, new status)) pairs -> change of each count."""
    deltas: Counter = Counter()
    for old, new in changes:
        old, new = _key(old), _key(new)
        if old != new:
            deltas[old] -= 1
            deltas[new] += 1
    return {k: n for k, n in deltas.items() if n}


def _key(key: Key) -> Tuple[str, str]:
    backend, status = key
    return (NO_BACKEND if backend is None else str(backend), str(status))


def apply_deltas(conn, campaign: str, deltas: Dict[Tuple[str, str], int]) -> None:
    """Add `deltas` to the counts in one statement (an upsert: a count seen for the first time
    starts at its delta). Keys in a fixed order: two writers never wait on each other in a cycle."""
    if not deltas:
        return
    insert = (postgresql.insert if conn.engine.dialect.name == "postgresql" else sqlite.insert)(status_counts)
    statement = insert.values([{"campaign": campaign, "backend": b, "status": s, "n": deltas[(b, s)]}
                               for b, s in sorted(deltas)])
    c = status_counts.c
    conn.execute(statement.on_conflict_do_update(index_elements=[c.campaign, c.backend, c.status],
                                                 set_={"n": c.n + statement.excluded.n}))


def read_counts(conn, campaign: str) -> Dict[str, int]:
    """Rows per status."""
    rows = conn.execute(select(status_counts.c.status, func.sum(status_counts.c.n))
                        .where(status_counts.c.campaign == campaign).group_by(status_counts.c.status))
    return {str(s): int(n) for s, n in rows if n}


def read_counts_by_backend(conn, campaign: str, none: str = "(none)") -> Dict[str, Dict[str, int]]:
    """Rows per backend (`none` for rows without one) and status."""
    rows = conn.execute(select(status_counts.c.backend, status_counts.c.status, status_counts.c.n)
                        .where(status_counts.c.campaign == campaign, status_counts.c.n > 0))
    out: Dict[str, Dict[str, int]] = {}
    for backend, status, n in rows:
        out.setdefault(str(backend) if backend else none, {})[str(status)] = int(n)
    return out
