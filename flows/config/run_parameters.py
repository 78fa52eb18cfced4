"""The run-jobs flow's parameters: their one home.

`RunParameters` declares each parameter once: name, type, default, range, description and (when
the command line writes it differently) its flag. From it come
- the flow's signature (`flow_signature`: `run_jobs(job_db=..., campaign=..., ...)`, what Prefect
  reads for the deployment form, and its parameter docs);
- the preflight (`flows/config/preflight.py` validates this model, without importing Prefect);
- the command line's flags and their help (`flows/console/cli.py`).

Adding a parameter is one field here (plus the code that uses it): the flow, the deployment form,
the preflight and the CLI flag (`--the-name`, or a `Flag` to name it otherwise) follow.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Callable, List, Optional, Union, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field

from flows.config.params import BackendConfig, ProcessCreatorConfig


@dataclass(frozen=True)
class Flag:
    """How the command line writes a parameter, when not `--<name with dashes>` and the type's
    usual placeholder (N, NUMBER, TEXT). `name` may say the opposite of a parameter that is on by
    default (`--no-download` for download_results)."""

    name: Optional[str] = None
    metavar: Optional[str] = None


class RunParameters(BaseModel):
    """The run-jobs flow's parameters, their defaults and ranges."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    job_db: Annotated[str, Field(description=(
        "Path of the job DB (.csv, .parquet, .geoparquet), or a SQL URL: postgresql://USER@HOST:PORT/DB "
        "(many runs, many machines) or sqlite:///path.db")), Flag(metavar="PATH|URL")]
    backends: Annotated[List[Union[BackendConfig, str]], Field(min_length=1, description=(
        "openEO backends: inline configs, or names of OpenEOBackend blocks")), Flag("--backend", "SPEC")]
    start_job: Annotated[Optional[Union[str, Callable[..., Any]]], Field(description=(
        "Import path 'package.module:function' of an openeo-style start_job callback")),
        Flag(metavar="MODULE:FUNCTION")] = None
    process: Annotated[Optional[ProcessCreatorConfig], Field(description=(
        "Create jobs from a user-defined process instead")), Flag("--process-id", "ID")] = None
    max_start_workers: Annotated[int, Field(ge=1, le=100, description="Start tasks running at once")] = 5
    poll_interval_seconds: Annotated[float, Field(gt=0, description="Seconds between status polls"),
                                     Flag("--poll-interval", "SECONDS")] = 10.0
    download_results: Annotated[bool, Field(description="Download results of finished jobs"),
                                Flag("--no-download")] = True
    root_dir: Annotated[Optional[str], Field(description=(
        "Where job_<id>/ result folders and collection.json go: a folder or an fsspec URL such as "
        "s3://bucket/prefix (default: beside the job DB; for a SQL job DB ./<campaign>/ in the working "
        "directory)")), Flag(metavar="DIR|URL")] = None
    results_storage_block: Annotated[Optional[str], Field(description=(
        "prefect-aws block with the object-storage credentials of root_dir, e.g. 's3-bucket/NAME' or "
        "'aws-credentials/NAME' (default: the AWS_* variables)")), Flag(metavar="TYPE/NAME")] = None
    cancel_running_job_after: Annotated[Optional[float], Field(gt=0, description=(
        "Cancel jobs running longer than this many seconds")), Flag(metavar="SECONDS")] = None
    max_runtime_minutes: Annotated[Optional[float], Field(gt=0, description=(
        "Bounded pass: start nothing new after this many minutes, finish what runs in this process, "
        "persist and end; the next run goes on (for schedules)")), Flag(metavar="MINUTES")] = None
    failure_threshold: Annotated[float, Field(ge=0, le=1, description=(
        "Share of rows that may end error/start_failed/canceled before the run ends Failed (0: any failure "
        "fails the run; 0.05: 5 %)")), Flag(metavar="SHARE")] = 0.0
    wait_for_lock: Annotated[bool, Field(description=(
        "If another run holds the job DB, wait for it instead of failing at once"))] = False
    max_attempts: Annotated[int, Field(ge=1, le=20, description=(
        "Jobs a row may use: a row whose job ends in error is resubmitted as a new job until it has used "
        "them (1: no resubmission)"))] = 1
    on_job_done: Annotated[Optional[str], Field(description=(
        "Import path of a hook (job_id, row, job_dir, connection) run as its own task after a finished "
        "job's results are downloaded")), Flag(metavar="MODULE:FUNCTION")] = None
    on_job_error: Annotated[Optional[str], Field(description=(
        "Import path of a hook (job_id, row, job_dir, connection) run after a failed job's error logs are "
        "saved")), Flag(metavar="MODULE:FUNCTION")] = None
    retry_failed: Annotated[bool, Field(description=(
        "Put rows that failed (error, start_failed, canceled) back to not_started at the start of this "
        "run, keeping previous_job_ids, previous_error and attempt"))] = False
    max_consecutive_failures: Annotated[int, Field(ge=0, description=(
        "After this many failures in a row with the same error on a backend (starts or jobs), start "
        "nothing more there in this run (0: never stop)"))] = 5
    campaign: Annotated[Optional[str], Field(description=(
        "The campaign inside a SQL job DB (one database holds many; may be left out when it holds "
        "one)")), Flag(metavar="NAME")] = None


def flag_of(name: str) -> Flag:
    """The parameter's flag as the command line writes it (name always set; metavar may be None)."""
    given = next((m for m in RunParameters.model_fields[name].metadata if isinstance(m, Flag)), Flag())
    return Flag(given.name or "--" + name.replace("_", "-"), given.metavar)


def flow_signature(model: type[BaseModel] = RunParameters, returns: Any = inspect.Signature.empty) -> inspect.Signature:
    """Keyword-only parameters, each annotated as declared in `model` (type, range and description
    inside `Annotated`, as Prefect's parameter validation and schema read them) with its default."""
    hints = get_type_hints(model, include_extras=True)
    parameters = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=without_flag(hints[name]),
                          default=inspect.Parameter.empty if field.is_required() else field.default)
        for name, field in model.model_fields.items()
    ]
    return inspect.Signature(parameters, return_annotation=returns)


def without_flag(annotation: Any) -> Any:
    """`Annotated[T, Field(...), Flag(...)]` -> `Annotated[T, Field(...)]`: the flag is the CLI's."""
    if get_origin(annotation) is not Annotated:
        return annotation
    kept = [m for m in annotation.__metadata__ if not isinstance(m, Flag)]
    return Annotated[(annotation.__origin__, *kept)] if kept else annotation.__origin__


def takes_run_parameters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give `fn(**parameters)` the signature and parameter docs of `RunParameters`, before `@flow`.

    Why the docs go into the docstring (Google style `Args:`): Prefect 3.9 builds the schema field
    of a parameter as `Field(description=<from the docstring or a Field default>)`, and pydantic
    lets that explicit `description=None` override the one inside `Annotated`.
    """
    own = inspect.signature(fn, eval_str=True)
    if [p.kind for p in own.parameters.values()] != [inspect.Parameter.VAR_KEYWORD]:
        raise TypeError(f"{fn.__name__} must take only **parameters to be given RunParameters' signature")
    fn.__signature__ = flow_signature(RunParameters, own.return_annotation)
    lines = [f"    {name}: {' '.join(field.description.split())}"
             for name, field in RunParameters.model_fields.items() if field.description]
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n\nArgs:\n" + "\n".join(lines)
    return fn

