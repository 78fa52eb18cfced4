"""A cycle's row writes as one statement per batch, whatever the number of rows.

PostgreSQL: `UPDATE jobs SET … FROM (VALUES (…), (…)) AS v(…) WHERE row = v.row AND owner = this run
RETURNING row` — one round trip that both writes the rows this run still holds and says which they
were (a row another run adopted meanwhile matches no owner and is left alone). SQLite (one machine,
writers serialized by BEGIN IMMEDIATE): read the held rows, then one executemany.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Set

from sqlalchemy import Integer, bindparam, cast, column, select, update, values

from jobdb.sql.schema import jobs

CHUNK_ROWS = 1000  # rows per statement: ~20 bound values each stays far below PostgreSQL's 65 535


def write_held_rows(conn, campaign: str, run_id: str, params: Sequence[Mapping[str, Any]],
                    columns: Sequence[str]) -> Set[int]:
    """Write `params` (dicts of `columns` plus `b_row`) to the rows `run_id` holds; returns those rows."""
    if not params:
        return set()
    if conn.engine.dialect.name == "postgresql":
        held: Set[int] = set()
        for start in range(0, len(params), CHUNK_ROWS):
            held |= _update_from_values(conn, campaign, run_id, params[start:start + CHUNK_ROWS], columns)
        return held
    return _update_many(conn, campaign, run_id, params, columns)


def _update_from_values(conn, campaign: str, run_id: str, params: Sequence[Mapping[str, Any]],
                        columns: Sequence[str]) -> Set[int]:
    # Every VALUES column carries the table column's type, and the SET casts to it: a column that is
    # NULL in every row of the batch would otherwise reach PostgreSQL as text.
    rows = values(column("b_row", Integer), *(column(c, jobs.c[c].type) for c in columns), name="v")
    rows = rows.data([(p["b_row"], *(p[c] for c in columns)) for p in params])
    statement = (update(jobs)
                 .where(jobs.c.campaign == campaign, jobs.c.row_index == rows.c.b_row, jobs.c.owner == run_id)
                 .values({c: cast(rows.c[c], jobs.c[c].type) for c in columns})
                 .returning(jobs.c.row_index))
    return set(conn.execute(statement).scalars())


def _update_many(conn, campaign: str, run_id: str, params: Sequence[Mapping[str, Any]],
                 columns: Sequence[str]) -> Set[int]:
    rows: List[int] = [p["b_row"] for p in params]
    held = set(conn.execute(select(jobs.c.row_index).where(
        jobs.c.campaign == campaign, jobs.c.owner == run_id, jobs.c.row_index.in_(rows))).scalars())
    mine: List[Dict[str, Any]] = [dict(p) for p in params if p["b_row"] in held]
    if mine:
        conn.execute(update(jobs).where(jobs.c.campaign == campaign, jobs.c.row_index == bindparam("b_row"),
                                        jobs.c.owner == run_id).values({c: bindparam(c) for c in columns}), mine)
    return held
