"""Job database: one row per openEO batch job, compatible with openeo's MultiBackendJobManager.

The names below load their module on first use (PEP 562): `import jobdb.atomic` or
`jobdb.status` from tasks/accounts or the CLI does not pull in pandas and pyarrow.
"""
from importlib import import_module
from typing import Any

_HOMES = {
    "JobDatabase": ("jobdb.database", "JobDatabase"),
    "load_job_db": ("jobdb.database", "load_job_db"),
    "JobDbLock": ("jobdb.lock", "JobDbLock"),
    "JobDbLocked": ("jobdb.lock", "JobDbLocked"),
    "JobDbPaths": ("jobdb.paths", "JobDbPaths"),
    "ACTIVE_STATUSES": ("jobdb.status", "HOLDS_SLOT"),
    "STATUSES": ("jobdb.status", "STATUSES"),
    "IllegalTransition": ("jobdb.status", "IllegalTransition"),
    "TERMINAL_STATUSES": ("jobdb.status", "TERMINAL"),
    "OPENEO_COLUMNS": ("jobdb.schema", "OPENEO_COLUMNS"),
    "OWN_COLUMNS": ("jobdb.schema", "OWN_COLUMNS"),
    "JobDbError": ("jobdb.schema", "JobDbError"),
    "JobDbExistsError": ("jobdb.schema", "JobDbExistsError"),
    "utc_now": ("jobdb.schema", "utc_now"),
    "remove_stale_temp_files": ("jobdb.storage", "remove_stale_temp_files"),
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'jobdb' has no attribute {name!r}")
    module, attribute = _HOMES[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOMES))
