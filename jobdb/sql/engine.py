"""Engines for the SQL campaign store: PostgreSQL through psycopg 3, SQLite for one machine.

- `postgresql://` (and `postgres://`) URLs get the `postgresql+psycopg` driver; connections idle
  for a second are pinged before use, and a statement that meets a lost connection is retried,
  so a PostgreSQL restart costs the store a retry, not the run.
- SQLite: every transaction is `BEGIN IMMEDIATE` (the write lock is taken at the start, so two
  processes never both read-then-write the same rows), WAL journal, 30 s busy timeout.
- `db_now()`: the database's clock as epoch seconds; leases compare against it, never a worker's
  clock, so machines with skewed clocks agree on whose lease ended.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

from sqlalchemy import create_engine, event, func, literal_column
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError

T = TypeVar("T")
# How long a store operation retries while the database is unreachable (a restart, a fail-over).
RECONNECT_SECONDS = 120.0
PING_AFTER_IDLE_SECONDS = 1.0  # a pooled connection idle longer is pinged before use


def engine_for(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_size=4, max_overflow=4)
        ping_when_idle(engine)
        return engine
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record):  # noqa: ANN001 - SQLAlchemy's event signature
            dbapi_connection.isolation_level = None  # let the "begin" hook below emit BEGIN
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

        @event.listens_for(engine, "begin")
        def _begin(connection):  # noqa: ANN001
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    raise ValueError(f"{redacted(url)}: not a PostgreSQL or SQLite URL")


def ping_when_idle(engine: Engine) -> None:
    """`pool_pre_ping`, for connections that sat in the pool longer than PING_AFTER_IDLE_SECONDS:
    a cycle's statements reuse a connection within milliseconds, and a ping before each would be
    one more round trip per statement. A connection that went bad in between fails its statement
    as a disconnect, which empties the pool and is retried (`retrying`)."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _fresh(_dbapi_connection, record):  # noqa: ANN001 - SQLAlchemy's event signature
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy):  # noqa: ANN001
        if time.monotonic() - record.info.get("idle_since", 0.0) <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure: the pool connects anew
            raise DisconnectionError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def autocommit(engine: Engine) -> Engine:
    """The engine for units of work that are one statement, or statements that need not commit
    together: on PostgreSQL each statement commits on its own (no BEGIN / COMMIT round trips);
    SQLite keeps its `BEGIN IMMEDIATE` transaction."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def redacted(url: str) -> str:
    """The URL without its password (for logs, reports, markers)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown as given minus anything after '@'
        return url.split("@")[-1]


def db_now(engine: Engine):
    """The database's current time as epoch seconds, as a SQL expression."""
    if engine.dialect.name == "postgresql":
        return func.extract("epoch", func.clock_timestamp())
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


def is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


def retrying(action: Callable[[], T], what: str, log, deadline_seconds: float = RECONNECT_SECONDS) -> T:
    """Run `action`, retrying while the database is unreachable (up to `deadline_seconds`)."""
    give_up = time.monotonic() + deadline_seconds
    told = False
    while True:
        try:
            return action()
        except (OperationalError, DBAPIError) as exc:
            if not is_disconnect(exc) or time.monotonic() > give_up:
                raise
            if not told:
                log.warning("job store: %s failed (%s); retrying until the database is back",
                            what, str(exc).splitlines()[0])
                told = True
            time.sleep(0.5)
