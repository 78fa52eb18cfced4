"""A cycle's row writes and the counts they change, in one statement whatever the number of rows.

PostgreSQL: one statement, one round trip —
`WITH written AS (UPDATE jobs SET … FROM json_to_recordset(:rows) AS v(…) WHERE row = v.row AND
owner = this run RETURNING …) INSERT INTO status_counts … ON CONFLICT … ; SELECT row FROM written`:
it writes the rows this run still holds (a row another run adopted meanwhile matches no owner and
is left alone), moves their counts from the (backend, status) each had to the one it has, and says
which rows it wrote. The rows travel as one JSON parameter, so the statement's text is the same for
every batch (SQLAlchemy compiles it once; psycopg prepares it after a few cycles), no batch comes
near PostgreSQL's 65 535 bound values, and nothing is escaped value by value in Python.
SQLite (one machine, writers serialized by BEGIN IMMEDIATE): read the held rows, one executemany,
then the counts (jobdb/sql/counts.py).
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Sequence, Set, Tuple

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.dialects import postgresql

from jobdb.sql.counts import Key, apply_deltas, status_deltas
from jobdb.sql.schema import NO_BACKEND, jobs


def write_held_rows(conn, campaign: str, run_id: str, params: Sequence[Mapping[str, Any]],
                    columns: Sequence[str], stored: Mapping[int, Key]) -> Set[int]:
    """Write `params` (dicts of `columns` plus `b_row`) to the rows `run_id` holds, and move their
    counts from `stored` (row -> (backend, status) as the database has it); returns the rows written."""
    if not params:
        return set()
    if conn.engine.dialect.name == "postgresql":
        rows = [{**p, "old_backend": stored[p["b_row"]][0], "old_status": stored[p["b_row"]][1]} for p in params]
        return set(conn.execute(_postgresql_statement(tuple(columns)),
                                {"rows": json.dumps(rows), "campaign": campaign, "run_id": run_id}).scalars())
    held = _update_many(conn, campaign, run_id, params, columns)
    apply_deltas(conn, campaign, status_deltas(
        (stored[p["b_row"]], (p["backend_name"], p["status"])) for p in params if p["b_row"] in held))
    return held


@lru_cache(maxsize=8)
def _postgresql_statement(columns: Tuple[str, ...]):
    dialect = postgresql.dialect()
    types = ", ".join(f"{c} {jobs.c[c].type.compile(dialect=dialect)}" for c in columns)
    assigned = ", ".join(f"{c} = v.{c}" for c in columns)
    # The counts move as status_deltas (jobdb/sql/counts.py) moves them: -1 where a written row was,
    # +1 where it is; keys in a fixed order, so two writers never wait on each other in a cycle.
    return text(
        f"WITH written AS (UPDATE jobs SET {assigned} "
        f"FROM json_to_recordset(CAST(:rows AS JSON)) AS v(b_row INTEGER, old_backend TEXT, old_status TEXT, {types}) "
        "WHERE jobs.campaign = :campaign AND jobs.row_index = v.b_row AND jobs.owner = :run_id "
        "RETURNING jobs.row_index, v.old_backend, v.old_status, jobs.backend_name, jobs.status), "
        "moved AS (SELECT COALESCE(old_backend, :none) AS backend, old_status AS status, -1 AS n FROM written "
        "UNION ALL SELECT COALESCE(backend_name, :none), status, 1 FROM written), "
        "counted AS (INSERT INTO status_counts (campaign, backend, status, n) "
        "SELECT :campaign, backend, status, SUM(n) FROM moved GROUP BY backend, status HAVING SUM(n) <> 0 "
        "ORDER BY backend, status "
        "ON CONFLICT (campaign, backend, status) DO UPDATE SET n = status_counts.n + excluded.n) "
        "SELECT row_index FROM written").bindparams(none=NO_BACKEND)


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
