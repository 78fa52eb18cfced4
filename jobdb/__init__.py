"""Job database: one row per openEO batch job, compatible with openeo's MultiBackendJobManager."""
from jobdb.database import JobDatabase, load_job_db
from jobdb.lock import JobDbLock, JobDbLocked
from jobdb.paths import JobDbPaths
from jobdb.status import HOLDS_SLOT as ACTIVE_STATUSES
from jobdb.status import STATUSES, IllegalTransition
from jobdb.status import TERMINAL as TERMINAL_STATUSES
from jobdb.schema import (
    OPENEO_COLUMNS,
    OWN_COLUMNS,
    JobDbError,
    JobDbExistsError,
    utc_now,
)
from jobdb.storage import remove_stale_temp_files

__all__ = [
    "ACTIVE_STATUSES",
    "OPENEO_COLUMNS",
    "STATUSES",
    "TERMINAL_STATUSES",
    "JobDatabase",
    "JobDbLock",
    "JobDbLocked",
    "JobDbPaths",
    "IllegalTransition",
    "OWN_COLUMNS",
    "JobDbError",
    "JobDbExistsError",
    "load_job_db",
    "remove_stale_temp_files",
    "utc_now",
]
