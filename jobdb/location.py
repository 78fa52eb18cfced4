"""What a `job_db` string names: a job DB file, or a campaign in a SQL database.

Forms that work: a local path ending in .csv / .parquet / .geoparquet, `postgresql://USER@HOST:PORT/DB`
(PostgreSQL through psycopg 3; runs on many machines may share it) and `sqlite:///path.db` (one
machine). Anything else — above all a file on object storage (`s3://…/jobs.parquet`), which cannot
be locked — is refused in one line before anything is read or written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from jobdb.schema import JobDbError

SQL_SCHEMES = ("postgresql", "postgres", "sqlite")
FORMS = ("a local .csv/.parquet/.geoparquet path, postgresql://USER@HOST:PORT/DB or sqlite:///path.db")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Location:
    kind: str  # "file" or "sql"
    target: str  # the path, or the SQL URL as given


def locate(job_db: str) -> Location:
    """Classify `job_db`, or raise JobDbError naming the forms that work."""
    text = str(job_db).strip()
    match = _SCHEME.match(text)
    if not match:
        return Location("file", text)
    scheme = match.group(1).lower()
    if scheme.split("+")[0] in SQL_SCHEMES:
        return Location("sql", text)
    hint = ("; a file on object storage cannot be locked: copy it into a SQL store with "
            "`python -m jobdb copy SRC postgresql://… --campaign NAME`") if scheme not in ("file",) else ""
    raise JobDbError(f"{text}: unsupported job database {scheme}:// (use {FORMS}){hint}")


def check_no_password(url: str) -> None:
    """A run's job_db is a flow parameter (stored by Prefect, shown in the UI): no secrets in it."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001 - an unparseable URL fails later, when it is opened
        return
    if password:
        raise JobDbError("job_db: the URL carries a password, and a flow parameter is no place for a secret: "
                         "leave it out and set PGPASSWORD (or ~/.pgpass) where the run runs")


def is_sql(job_db: Optional[str]) -> bool:
    try:
        return job_db is not None and locate(job_db).kind == "sql"
    except JobDbError:
        return False
