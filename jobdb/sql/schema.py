"""Tables of the SQL campaign store and their versioned upgrades.

One database holds many campaigns. The columns every campaign has (openeo's and ours) are real
columns, so the flow's queries (claims, counts per status, active jobs per account) use indexes;
a campaign's own columns (tile_id, year, bounds, anything the user added) live in one JSON column
`extra`, because they differ per campaign; the geometry is WKB (exact, any geometry type) with the
CRS kept once per campaign. The column order of the source file is kept in `campaigns.columns`,
so an export gives back the same table.

Versioning: a `schema_version` table and a list of upgrade steps, applied in one transaction when
a store is opened. Chosen over Alembic because the store upgrades databases it meets at run time
(there is no deploy step that could run `alembic upgrade`), and a list of steps is a dozen lines
that cannot get out of step with the package; Alembic's migration environment would ship a second
configuration for the same thing.
"""
from __future__ import annotations

from typing import Callable, List

from sqlalchemy import (
    JSON, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text, func, inspect, select, text,
)
from sqlalchemy.engine import Connection

from jobdb.schema import JobDbError
from jobdb.status import ERROR, FINISHED, NOT_STARTED, TERMINAL

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

campaigns = Table(
    "campaigns", metadata,
    Column("name", String(200), primary_key=True),
    Column("rows", Integer, nullable=False),
    Column("columns", JSON, nullable=False),  # the source's column names, in order
    Column("geometry_crs", Text),  # "EPSG:4326", or a WKT CRS; None without geometry / CRS
    Column("created_at", String(32), nullable=False),
)

# Fixed per-row columns: openeo's manager columns and the project's own (jobdb/schema.py).
TEXT_COLUMNS = ("id", "backend_name", "start_time", "running_start_time", "job_marker", "results_status",
                "results_error", "error_message", "previous_job_ids", "previous_error", "postprocess_status",
                "postprocess_error")
FIXED_COLUMNS = ("status", "costs", "attempt") + TEXT_COLUMNS

def _listed(statuses) -> str:
    return ", ".join(f"'{s}'" for s in sorted(statuses))


# Each partial index's WHERE, and the same text in the claims that use it (PostgreSQL and SQLite
# use a partial index only for a query whose WHERE implies the index's).
WORK_LEFT = {
    "in_flight": f"status NOT IN ({_listed(TERMINAL | {NOT_STARTED})})",
    "results_pending": f"results_status IS NULL AND status IN ({_listed({ERROR, FINISHED})})",
    "hook_pending": f"postprocess_status IS NULL AND status IN ({_listed({ERROR, FINISHED})})",
}

jobs = Table(
    "jobs", metadata,
    Column("campaign", String(200), primary_key=True),
    Column("row_index", Integer, primary_key=True, autoincrement=False),
    Column("status", String(32), nullable=False),
    Column("costs", Float),
    Column("attempt", Integer),
    *(Column(name, Text) for name in TEXT_COLUMNS),
    Column("geometry", LargeBinary),  # WKB
    Column("extra", JSON),  # the campaign's own columns
    Column("account", Text),  # the backend account whose slot an active row holds
    Column("owner", String(64)),  # the run that claimed the row (runs.run_id)
    Index("jobs_campaign_status", "campaign", "status", "row_index"),  # claims: waiting rows in row order
    Index("jobs_account_status", "account", "status"),
    # Rows another run may have to adopt (jobdb/sql/view.py `adoptable_sql`), by partial indexes:
    # the adoption claim every few seconds reads the rows in flight and those with work left, never
    # the campaign's settled rows (a full scan cost ~0.5 s at 100 000 rows).
    *(Index(f"jobs_{name}", "campaign", "row_index", postgresql_where=text(where), sqlite_where=text(where))
      for name, where in WORK_LEFT.items()),
    # No index on owner (dropped in v4): a cycle's write is guarded by `owner = this run`, and with
    # such an index PostgreSQL joined every row the run holds instead of looking up the changed ones
    # by key; every claim also paid for the index's upkeep. Only a run's release filters by owner.
)

runs = Table(
    "runs", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("campaign", String(200), nullable=False),
    Column("heartbeat_at", Float, nullable=False),  # database clock, epoch seconds
    Column("started_at", Float, nullable=False),
    Column("note", JSON),  # host, pid, flow run id
)

NO_BACKEND = ""  # status_counts.backend of rows without a backend (a key column cannot be NULL)

# Rows per backend × status of each campaign, kept by every write that changes them (in its
# transaction), so a cycle and its progress table read counts without a GROUP BY over the campaign.
status_counts = Table(
    "status_counts", metadata,
    Column("campaign", String(200), primary_key=True),
    Column("backend", String(200), primary_key=True),  # "" for rows without a backend (v3)
    Column("status", String(32), primary_key=True),
    Column("n", Integer, nullable=False),
)

# How many slots of an account a run holds after its last claim (its creating intents included).
run_accounts = Table(
    "run_accounts", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("account", Text, primary_key=True),
    Column("holding", Integer, nullable=False),
    Column("wants", Integer),  # holding + rows it could start, for the other runs' fair shares (v2)
)

# One row per backend account: locked FOR UPDATE to serialize slot claims and start turns.
accounts = Table(
    "accounts", metadata,
    Column("account", Text, primary_key=True),
    Column("next_turn_at", Float, nullable=False, default=0.0),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)


def _v2(conn: Connection) -> None:
    """run_accounts.wants (fair shares). A database made by this release's `_v1` has it already."""
    if "wants" not in {c["name"] for c in inspect(conn).get_columns("run_accounts")}:
        conn.execute(text("ALTER TABLE run_accounts ADD COLUMN wants INTEGER"))


def _v3(conn: Connection) -> None:
    """status_counts per backend too: the table is made again and counted from the rows."""
    if "backend" in {c["name"] for c in inspect(conn).get_columns("status_counts")}:
        return
    status_counts.drop(conn)
    status_counts.create(conn)
    for name in conn.execute(select(campaigns.c.name)).scalars().all():
        recount(conn, name)


def recount(conn, campaign: str) -> None:
    """Counts from the rows themselves (a new campaign, or an upgrade that changes the table)."""
    conn.execute(status_counts.delete().where(status_counts.c.campaign == campaign))
    backend = func.coalesce(jobs.c.backend_name, NO_BACKEND)
    counted = conn.execute(select(backend, jobs.c.status, func.count()).where(jobs.c.campaign == campaign)
                           .group_by(backend, jobs.c.status)).all()
    if counted:
        conn.execute(status_counts.insert(), [{"campaign": campaign, "backend": b, "status": s, "n": int(n)}
                                              for b, s, n in counted])


def _v4(conn: Connection) -> None:
    """The index on (campaign, owner) goes, the partial indexes of rows with work left come (see `jobs`)."""
    conn.execute(text("DROP INDEX IF EXISTS jobs_campaign_owner"))
    for index in jobs.indexes:
        if index.name.removeprefix("jobs_") in WORK_LEFT:
            index.create(conn, checkfirst=True)


# Step i brings a database from version i to i + 1. Append; never edit a released step (`_v1`
# creates the current tables, so later steps check before they alter).
UPGRADES: List[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4]
VERSION = len(UPGRADES)


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    return int(conn.execute(select(schema_version.c.version)).scalar() or 0)


def upgrade(conn: Connection) -> int:
    """Bring the schema to VERSION inside the caller's transaction; returns the version found."""
    found = current_version(conn)
    if found > VERSION:
        raise JobDbError(f"the database's store schema is version {found}, newer than this release "
                         f"understands ({VERSION}): upgrade this package")
    for step in UPGRADES[found:]:
        step(conn)
    if found == 0:
        conn.execute(schema_version.insert().values(version=VERSION))
    elif found < VERSION:
        conn.execute(schema_version.update().values(version=VERSION))
    return found
