"""Checks the command line runs before the flow (so before a temporary Prefect server starts).

Prefect-free on purpose: a typo must cost a second, not the 5-10 s of starting Prefect. The same
checks run again inside the flow (`flows/run_jobs.py: prepare`), which deployment runs rely on.
Every problem is raised as one `SetupError` whose `.parameter` names the flow parameter at fault.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional

from pydantic import BaseModel, ValidationError

from flows.config.params import BackendConfig, ProcessCreatorConfig, SetupError, check_unique_names
from flows.config.run_parameters import RunParameters


def preflight(parameters: Mapping[str, Any], connect: bool = True, after_flags: Optional[Callable[[], None]] = None,
              before_connecting: Optional[Callable[[], None]] = None) -> RunParameters:
    """Validate the flow parameters (`RunParameters`, the flow's own), the job DB, its lock, the
    callback and (with `connect`) every inline backend's URL and credentials. Raises SetupError; changes nothing but the lock file.
    `before_connecting` is called once the offline checks passed (the CLI starts its Prefect
    server there: bad input found offline costs no server, the backend checks overlap its start).
    `after_flags` is called once the parameters themselves are valid, before the callback's import
    and the job DB's read (the CLI's server warms up there: imports only, no server yet)."""
    inline = parameters.get("backends")
    for backend in inline if isinstance(inline, list) else ():  # each one first: its errors name it
        if not isinstance(backend, str):
            validate(BackendConfig, backend, parameter="backends", label=backend_label(backend))
    params = validate(RunParameters, parameters)
    backends = [b for b in params.backends if isinstance(b, BackendConfig)]
    check(lambda: check_unique_names(backends, at_least_one=False), "backends")
    if after_flags is not None:
        after_flags()
    if (params.start_job is None) == (params.process is None):
        raise SetupError("give exactly one of start_job (an import path) or process (a process-based creator)",
                         parameter="start_job")
    process = params.process
    if params.start_job is not None:
        from flows.config.setup import load_start_job

        check(lambda: load_start_job(params.start_job), "start_job")
    from jobdb.status import HOOK_DONE, HOOK_ERROR

    for kind in (HOOK_DONE, HOOK_ERROR):
        spec = getattr(params, f"on_job_{kind}")
        if spec:
            from tasks.callables import load_hook

            try:
                load_hook(spec)
            except ValueError as exc:
                raise SetupError(f"on_job_{kind}: {exc}", parameter=f"on_job_{kind}") from None
    store = open_job_db(params.job_db, params.campaign, params.root_dir)
    from jobdb import JobDbLock

    if isinstance(store.lock, JobDbLock):  # a SQL campaign has no lock: many runs share it
        check_not_locked(params.job_db, params.wait_for_lock)
    if len(backends) == len(params.backends):  # block names may name any backend: the flow checks those
        from flows.config.setup import check_row_backends

        check(lambda: check_row_backends(store.named_backends(), {b.name for b in backends}), "backends")
    if before_connecting is not None:
        before_connecting()
    if connect:
        check_backends(backends, process, store.columns())
    return params


def validate(model: type[BaseModel], value: Any, parameter: Optional[str] = None, label: str = "") -> Any:
    """`model(**value)`, or a SetupError naming the parameter and saying what is wrong, in words."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = [str(part) for part in error["loc"]]
        name = parameter or (location.pop(0) if location else None)
        field = ".".join(location)
        prefix = " ".join(p for p in (label, f"{field}:" if field else "") if p)
        raise SetupError(f"{prefix + ' ' if prefix else ''}{describe(error)}", parameter=name) from None


def describe(error: Mapping[str, Any]) -> str:
    """A pydantic error as a short phrase: `must be > 0 (got -1)`."""
    ctx = error.get("ctx") or {}
    bounds = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
              "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}
    kind = error.get("type", "")
    if kind in bounds:
        key, sign = bounds[kind]
        text = f"must be {sign} {shown(ctx.get(key))}"
    elif kind == "too_short":
        text = f"give at least {ctx.get('min_length')}"
    elif kind == "value_error":
        return str(error.get("msg", "invalid")).removeprefix("Value error, ")
    elif kind == "missing":
        return "is required"
    elif kind == "extra_forbidden":
        return "is not a known option"
    else:
        message = str(error.get("msg", "invalid"))
        text = message[:1].lower() + message[1:]
    return f"{text} (got {shown(error.get('input'))})" if "input" in error else text


def shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return "an empty list" if value == [] else type(value).__name__
    return str(value)


def backend_label(backend: Any) -> str:
    return f"backend {backend['name']!r}:" if isinstance(backend, Mapping) and backend.get("name") else ""


def check(action: Callable[[], Any], parameter: str) -> Any:
    """Run one check; a SetupError that names no parameter is attributed to `parameter`."""
    try:
        return action()
    except SetupError as exc:
        if exc.parameter is None:
            exc.parameter = parameter
        raise


def open_job_db(job_db: str, campaign: Optional[str] = None, root_dir: Optional[str] = None):
    """The job DB's store (a file, or a campaign in a SQL database); reads, never writes."""
    from jobdb import JobDbError
    from jobdb.interface import open_store

    try:
        return open_store(job_db, campaign, root_dir)
    except JobDbError as exc:
        raise SetupError(str(exc), parameter="campaign" if "campaign" in str(exc) else "job_db") from None


def check_not_locked(job_db: str, wait_for_lock: bool) -> None:
    """Refuse at once (JobDbLocked: the run is skipped, not bad input) when another live run owns
    the DB, unless the run is to wait for it. A note left by a dead holder stays for the flow."""
    if wait_for_lock:
        return
    from jobdb import JobDbLock, JobDbLocked

    lock = JobDbLock(job_db)
    if not lock.is_free():
        raise JobDbLocked(lock.paths.db, lock.holder())


def check_backends(backends: List[BackendConfig], process: Optional[ProcessCreatorConfig], columns) -> None:
    """Reachable, credentials accepted, and (for `process`) every process parameter provided."""
    from flows.config.setup import check_process_parameters, connect_backend, make_process_creator

    connections = []
    try:
        for backend in backends:
            connections.append(check(lambda: connect_backend(backend), "backends"))
        if process is not None and connections:
            creator = make_process_creator(process)
            check(lambda: check_process_parameters(creator, process, connections[0], columns), "process")
    finally:
        for connection in connections:
            connection.session.close()
