"""JSON-typed parameters of the run-jobs flow (rendered as a form in the Prefect UI).

Secrets are never parameters: a backend's auth names the environment variable or the
Prefect Secret block that holds the secret, and the flow reads it at run time. A backend made
from an `OpenEOBackend` block (`flows/config/blocks.py`) carries a private reader of the block's own
secret fields instead (`AuthConfig.with_secret_source`), so this module never imports the block.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator


class SetupError(ValueError):
    """Bad input found before any job was created; the job DB is left untouched.

    `parameter` names the flow parameter at fault (e.g. "start_job", "backends"), so the CLI can
    name the flag the user wrote instead (`--start-job`).
    """

    def __init__(self, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.parameter = parameter


AuthType = Literal["none", "basic", "bearer", "oidc", "env", "oidc_client_credentials", "oidc_refresh_token"]
AUTH_TYPES_HELP = (
    "Authentication method: 'oidc' (openeo's authenticate_oidc(): a refresh token from openeo's token store; "
    "the device-code login only when a terminal is attached), 'env' (openeo's OPENEO_AUTH_METHOD, "
    "OPENEO_AUTH_CLIENT_ID, OPENEO_AUTH_CLIENT_SECRET, OPENEO_AUTH_PROVIDER_ID environment variables), "
    "'oidc_client_credentials', 'oidc_refresh_token', 'basic', 'bearer' or 'none'"
)
# Context key for validating a config whose secrets come from a block rather than env/Secret blocks.
SECRETS_FROM_BLOCK = "secrets_from_block"


class AuthConfig(BaseModel):
    """How to authenticate to one backend. Each secret comes from an env var or a Secret block."""

    model_config = ConfigDict(extra="forbid")

    type: AuthType = Field("none", description=AUTH_TYPES_HELP)
    username: Optional[str] = Field(None, description="Basic auth user name")
    password_env: Optional[str] = Field(None, description="Env var holding the basic auth password")
    password_block: Optional[str] = Field(None, description="Prefect Secret block holding the basic auth password")
    token_env: Optional[str] = Field(None, description="Env var holding a bearer token")
    token_block: Optional[str] = Field(None, description="Prefect Secret block holding a bearer token")
    client_id: Optional[str] = Field(
        None, description="OIDC client id (for 'oidc': default = the backend's default client)")
    client_secret_env: Optional[str] = Field(None, description="Env var holding the OIDC client secret")
    client_secret_block: Optional[str] = Field(None, description="Prefect Secret block holding the OIDC client secret")
    refresh_token_env: Optional[str] = Field(None, description="Env var holding an OIDC refresh token")
    refresh_token_block: Optional[str] = Field(None, description="Prefect Secret block holding an OIDC refresh token")
    provider_id: Optional[str] = Field(None, description="OIDC provider id (default: the backend's default)")

    _secret_source: Optional[Callable[[str], Optional[str]]] = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> "AuthConfig":
        secrets_elsewhere = bool(info.context and info.context.get(SECRETS_FROM_BLOCK))
        needs = {
            "basic": ("password", self.username is not None),
            "bearer": ("token", True),
            "oidc_client_credentials": ("client_secret", self.client_id is not None),
            "oidc_refresh_token": ("refresh_token", self.client_id is not None),
        }
        if self.type in needs:
            secret, has_id = needs[self.type]
            if not has_id:
                raise ValueError(f"auth type {self.type!r} needs {'username' if self.type == 'basic' else 'client_id'}")
            if not (getattr(self, f"{secret}_env") or getattr(self, f"{secret}_block") or secrets_elsewhere):
                raise ValueError(f"auth type {self.type!r} needs {secret}_env or {secret}_block")
        return self

    def with_secret_source(self, source: Callable[[str], Optional[str]]) -> "AuthConfig":
        """A copy whose secrets not named by an env var or Secret block are `source(kind)`."""
        copy = self.model_copy()
        copy._secret_source = source
        return copy

    def read_secret(self, kind: str) -> str:
        """The secret `kind` (password, token, client_secret, refresh_token), read now."""
        env_name, block_name = getattr(self, f"{kind}_env"), getattr(self, f"{kind}_block")
        if env_name:
            value = os.environ.get(env_name)
            if not value:
                raise SetupError(f"environment variable {env_name!r} (the {kind} for this backend) is not set")
            return value
        if not block_name:
            value = self._secret_source(kind) if self._secret_source is not None else None
            if not value:
                raise SetupError(f"no {kind} for auth type {self.type!r}: give {kind}_env or {kind}_block")
            return value
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(block_name).get())
        except ValueError as exc:
            raise SetupError(f"Prefect Secret block {block_name!r} (the {kind}) could not be loaded: {exc}") from exc


class BackendSettings(BaseModel):
    """One openEO backend but its name: its root URL as users know it, its job slots, quotas and
    auth. An `OpenEOBackend` block holds these (flows/config/blocks.py); its name is the block's."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., description="Root URL, e.g. https://openeo.dataspace.copernicus.eu")
    parallel_jobs: int = Field(2, ge=1, description="Maximum concurrently active jobs on this backend")
    max_parallel_starts: Optional[int] = Field(
        None,
        ge=1,
        description="Start tasks of this backend in flight at once in this run; the scheduler holds back the "
        "rest (no Prefect tag concurrency limit). Off by default: only max_start_workers bounds them. Prefect "
        "Variable openeo-max-parallel-starts-<name> overrides it while the run goes on",
    )
    max_starts_per_minute: Optional[float] = Field(
        None,
        gt=0,
        description="Job starts (POST /jobs/{id}/results) per minute on this account, spaced evenly, across all "
        "tasks of a run and runs on this machine (CDSE: 12). Off by default",
    )
    max_concurrent_requests: Optional[int] = Field(
        None,
        ge=1,
        description="HTTP requests in progress at once on this account, across all tasks of a run (CDSE: 2). "
        "Off by default",
    )
    create_ahead: Optional[int] = Field(
        None,
        ge=0,
        description="Jobs kept created but not started on this backend, each started the moment a slot frees "
        "(default: parallel_jobs; 0 for backends that count created jobs against a limit). A run that is stopped "
        "for good leaves them created, never started",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @property
    def jobs_created_ahead(self) -> int:
        """`create_ahead`, or by default one job ready for each slot."""
        return self.parallel_jobs if self.create_ahead is None else self.create_ahead

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"backend url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class BackendName(BaseModel):
    """A backend's short name (an inline config's; a block's is the block's name)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="Short name, stored in the job DB's backend_name")


class BackendConfig(BackendSettings, BackendName):  # pydantic lists the last base's fields first: name, url, ...
    """One openEO backend: its name, root URL, job slots, quotas and auth."""


class ProcessCreatorConfig(BaseModel):
    """Create each job from a user-defined process; row columns fill its parameters by name."""

    model_config = ConfigDict(extra="forbid")

    process_id: str = Field(..., description="Id of the user-defined process (UDP)")
    namespace: Optional[str] = Field(None, description="URL of the process definition, or None for the user's own UDP")
    parameter_defaults: Dict[str, Any] = Field(default_factory=dict, description="Values for parameters no column provides")
    parameter_column_map: Optional[Dict[str, str]] = Field(None, description="Process parameter -> job DB column")


def check_unique_names(backends: List[BackendConfig], at_least_one: bool = True) -> None:
    """A row's `backend_name` names one backend: names must be unique (and, by default, given)."""
    names = [b.name for b in backends]
    if at_least_one and not names:
        raise SetupError("no backends given", parameter="backends")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SetupError(f"backend names must be unique, repeated: {duplicates}", parameter="backends")
