"""JSON-typed parameters of the run-jobs flow (rendered as a form in the Prefect UI).

Secrets are never parameters: a backend's auth names the environment variable or the
Prefect Secret block that holds the secret, and the flow reads it at run time.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SetupError(ValueError):
    """Bad input found before any job was created; the job DB is left untouched.

    `parameter` names the flow parameter at fault (e.g. "start_job", "backends"), so the CLI can
    name the flag the user wrote instead (`--start-job`).
    """

    def __init__(self, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.parameter = parameter


AuthType = Literal["none", "basic", "bearer", "oidc_client_credentials", "oidc_refresh_token"]


class AuthConfig(BaseModel):
    """How to authenticate to one backend. Each secret comes from an env var or a Secret block."""

    model_config = ConfigDict(extra="forbid")

    type: AuthType = Field(
        "none", description="Authentication method"
    )
    username: Optional[str] = Field(None, description="Basic auth user name")
    password_env: Optional[str] = Field(None, description="Env var holding the basic auth password")
    password_block: Optional[str] = Field(None, description="Prefect Secret block holding the basic auth password")
    token_env: Optional[str] = Field(None, description="Env var holding a bearer token")
    token_block: Optional[str] = Field(None, description="Prefect Secret block holding a bearer token")
    client_id: Optional[str] = Field(None, description="OIDC client id")
    client_secret_env: Optional[str] = Field(None, description="Env var holding the OIDC client secret")
    client_secret_block: Optional[str] = Field(None, description="Prefect Secret block holding the OIDC client secret")
    refresh_token_env: Optional[str] = Field(None, description="Env var holding an OIDC refresh token")
    refresh_token_block: Optional[str] = Field(None, description="Prefect Secret block holding an OIDC refresh token")
    provider_id: Optional[str] = Field(None, description="OIDC provider id (default: the backend's default)")
    backend_block: Optional[str] = Field(
        None, description="OpenEOBackend block whose secret fields hold the secrets (set when a block name is given)"
    )

    @model_validator(mode="after")
    def _complete(self) -> "AuthConfig":
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
            if not (getattr(self, f"{secret}_env") or getattr(self, f"{secret}_block") or self.backend_block):
                raise ValueError(f"auth type {self.type!r} needs {secret}_env or {secret}_block")
        return self

    def read_secret(self, kind: str) -> str:
        """The secret `kind` (password, token, client_secret, refresh_token), read now."""
        env_name, block_name = getattr(self, f"{kind}_env"), getattr(self, f"{kind}_block")
        if env_name:
            value = os.environ.get(env_name)
            if not value:
                raise SetupError(f"environment variable {env_name!r} (the {kind} for this backend) is not set")
            return value
        if not block_name and self.backend_block:
            from flows.blocks import load_backend_block

            return load_backend_block(self.backend_block).secret(kind)
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(block_name).get())
        except ValueError as exc:
            raise SetupError(f"Prefect Secret block {block_name!r} (the {kind}) could not be loaded: {exc}") from exc


class BackendConfig(BaseModel):
    """One openEO backend: its root URL as users know it, its job slots and auth."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="Short name, stored in the job DB's backend_name")
    url: str = Field(..., description="Root URL, e.g. https://openeo.dataspace.copernicus.eu")
    parallel_jobs: int = Field(2, ge=1, description="Maximum concurrently active jobs on this backend")
    max_parallel_starts: Optional[int] = Field(
        None,
        ge=1,
        description="Cap on concurrent start tasks for this backend across all flow runs, as a Prefect tag "
        "concurrency limit 'openeo-start:<name>'. Off by default: each limited task run costs ~1 s of "
        "Prefect lease bookkeeping (measured on 3.8.8)",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"backend url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class ProcessCreatorConfig(BaseModel):
    """Create each job from a user-defined process; row columns fill its parameters by name."""

    model_config = ConfigDict(extra="forbid")

    process_id: str = Field(..., description="Id of the user-defined process (UDP)")
    namespace: Optional[str] = Field(None, description="URL of the process definition, or None for the user's own UDP")
    parameter_defaults: Dict[str, Any] = Field(default_factory=dict, description="Values for parameters no column provides")
    parameter_column_map: Optional[Dict[str, str]] = Field(None, description="Process parameter -> job DB column")
