"""Everything checked before the first job is created: creator, backends, credentials, job DB."""
from __future__ import annotations

import inspect
import logging
import re
from typing import Any, Callable, Dict, Iterable, Optional, Union

import requests
from openeo.extra.job_management import ProcessBasedJobCreator
from openeo.internal.processes.parse import Process, parse_remote_process_definition
from openeo.rest import OpenEoApiError, OpenEoApiPlainError, OpenEoClientException

from flows.config.login import log_in
from flows.config.params import BackendConfig, ProcessCreatorConfig, SetupError
from tasks.connections import IDEMPOTENT_RETRY, SETUP_RETRY, ManagedConnection, make_session, use_pacing
from tasks.accounts.identity import account_id
from tasks.callables import resolve
from tasks.retry_policy import SETUP, request_timeout
from tasks.accounts.pacing import pacer_for

log = logging.getLogger(__name__)

START_JOB_ARGUMENTS = ("row", "connection", "provider", "connection_provider")


def load_start_job(spec: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The user's `start_job` callback, from an import path `"pkg.module:function"` or as given."""
    if callable(spec):
        function = spec
    else:
        try:
            function = resolve(spec)
        except ValueError as exc:
            raise SetupError(f"start_job {exc}", parameter="start_job") from exc.__cause__
        if not callable(function):
            kind = type(function).__name__
            raise SetupError(f"start_job {spec!r} is not callable (it is {'an' if kind[0] in 'aeiou' else 'a'} {kind})",
                             parameter="start_job")
    check_start_job_signature(function, str(spec) if not callable(spec) else getattr(spec, "__name__", repr(spec)))
    return function


def check_start_job_signature(function: Callable[..., Any], name: str) -> None:
    """openeo calls `start_job(row=, connection=, provider=, connection_provider=)`: it must accept that."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins or C callables: nothing to check
    try:
        signature.bind(**{argument: None for argument in START_JOB_ARGUMENTS})
    except TypeError as exc:
        raise SetupError(
            f"start_job {name} cannot be called as start_job(row, connection, provider, connection_provider): {exc}. "
            "Accept the arguments you use and **kwargs for the rest, as with openeo's MultiBackendJobManager.",
            parameter="start_job",
        ) from None


def make_process_creator(config: ProcessCreatorConfig) -> ProcessBasedJobCreator:
    return ProcessBasedJobCreator(
        process_id=config.process_id,
        namespace=config.namespace,
        parameter_defaults=dict(config.parameter_defaults),
        parameter_column_map=config.parameter_column_map,
    )


def load_process_definition(config: ProcessCreatorConfig, connection: ManagedConnection) -> Process:
    """The definition ProcessBasedJobCreator will use: from the namespace URL, or the user's own UDP."""
    if config.namespace is None:
        return Process.from_dict(connection.user_defined_process(config.process_id).describe())
    if re.match(r"https?://", config.namespace):
        return parse_remote_process_definition(namespace=config.namespace, process_id=config.process_id)
    raise SetupError(f"process {config.process_id!r}: namespace {config.namespace!r} is not a URL "
                     "(give the URL of the process definition, or no namespace for your own UDP)")


def check_process_parameters(
    creator: ProcessBasedJobCreator, config: ProcessCreatorConfig, connection: ManagedConnection, columns: Iterable[str]
) -> None:
    """Every required process parameter must come from a column, a default or the process itself."""
    try:
        definition = load_process_definition(config, connection)
    except SetupError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to fetch it is a setup problem
        raise SetupError(
            f"process {config.process_id!r} (namespace {config.namespace!r}) could not be loaded: {exc}",
            parameter="process",
        ) from exc
    columns = set(columns)
    column_map = config.parameter_column_map or {}
    geometry_columns = {"geometry"} & columns
    missing = []
    for parameter in definition.parameters or []:
        column = column_map.get(parameter.name, parameter.name)
        provided = (
            column in columns
            or parameter.name in config.parameter_defaults
            or parameter.has_default()
            or parameter.optional
            or (geometry_columns and parameter.schema.accepts_geojson())
        )
        if not provided:
            missing.append(parameter.name)
    if missing:
        raise SetupError(
            f"process {config.process_id!r} needs parameter(s) {missing} that no job DB column "
            f"(columns: {sorted(columns)}) nor parameter_defaults provide",
            parameter="process",
        )


# Create workers per backend follow its slots up to this many times `max_start_workers`
# (flows/run_loop/account_sharing.py::create_workers); the connection pool counts them too.
CREATE_WORKERS_PER_START_WORKER = 2


def connection_pool_size(start_workers: int, task_workers: int) -> int:
    """HTTP connections kept per backend: one for each thread that may use it at once (its start
    workers, up to twice as many create workers (flows/run_loop/account_sharing.py), the flow's task
    workers, the flow thread), so that big runs neither discard connections nor log "Connection
    pool is full" (urllib3) hundreds of times."""
    return max(32, (1 + CREATE_WORKERS_PER_START_WORKER) * start_workers + task_workers + 1)


def connect_backend(backend: BackendConfig, pool_size: int = 32) -> ManagedConnection:
    """Connect (with version discovery, as `openeo.connect`), authenticate and pace, or fail clearly."""
    try:
        # Few retries while connecting: a wrong URL fails in seconds, not after minutes of backoff.
        connection = ManagedConnection(backend.url, session=make_session(pool_size, SETUP_RETRY),
                                       default_timeout=SETUP.timeout)
    except (requests.RequestException, OpenEoApiError, OpenEoApiPlainError, OpenEoClientException) as exc:
        raise SetupError(f"backend {backend.name!r} at {backend.url} is not reachable as an openEO backend: {exc}",
                         parameter="backends") from exc
    auth = backend.auth
    user_id = None
    try:
        log_in(connection, backend)
        if auth.type != "none":
            # proves the credentials work, before any job is created; names the account
            user_id = connection.describe_account().get("user_id")
    except SetupError:
        raise
    except (OpenEoApiError, OpenEoApiPlainError) as exc:
        raise SetupError(f"backend {backend.name!r}: authentication ({auth.type}) failed: {exc}",
                         parameter="backends") from None
    except (requests.RequestException, OpenEoClientException, ValueError) as exc:
        raise SetupError(f"backend {backend.name!r}: authentication ({auth.type}) failed: {exc}",
                         parameter="backends") from None
    connection.account = account_id(backend.url, user_id, getattr(auth, "client_id", None),
                                    getattr(auth, "username", None))
    pacer = pacer_for(connection.account, backend.max_starts_per_minute, backend.max_concurrent_requests)
    use_pacing(connection, pacer, IDEMPOTENT_RETRY, pool_size)  # and patient retries for the run itself
    connection.default_timeout = request_timeout()
    return connection


def check_row_backends(backend_names_in_db: Dict[int, Optional[str]], known: Iterable[str]) -> None:
    """Rows that name a backend must name one of this run's backends."""
    known = set(known)
    unknown = {row: name for row, name in backend_names_in_db.items() if name and name not in known}
    if unknown:
        shown = ", ".join(f"row {row}: {name!r}" for row, name in list(unknown.items())[:10])
        raise SetupError(
            f"job DB rows name backends this run does not know ({shown}); configured: {sorted(known)}",
            parameter="backends",
        )
