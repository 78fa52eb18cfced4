"""A Prefect block for one openEO backend: URL, job slots, quotas, auth method and its secrets.

Register the block type once per Prefect server, then create blocks in the UI or in Python:

    prefect block register -m flows.config.blocks

    from flows.config.blocks import OpenEOBackend
    OpenEOBackend(url="https://openeo.dataspace.copernicus.eu", parallel_jobs=2, max_starts_per_minute=12,
                  max_concurrent_requests=2, auth_type="oidc_client_credentials", client_id="...",
                  client_secret="...").save("cdse")

A run then names the block instead of an inline config: `backends=["cdse"]`. The block's
document name becomes the backend name in the job DB. Inline configs and blocks validate into
one model, `BackendConfig`; the block builds the authenticated connection itself
(`OpenEOBackend.connect`, as prefect-dbt's credentials blocks build their clients). The secrets
stay in the block: the flow run's parameters only hold the name, and each secret is read once,
when the flow connects.
"""
from __future__ import annotations

from typing import Optional, Union

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from flows.config.params import AUTH_TYPES_HELP, SECRETS_FROM_BLOCK, AuthType, BackendConfig, SetupError
from flows.config.setup import connect_backend
from tasks.connections import ManagedConnection

SECRET_KINDS = ("password", "token", "client_secret", "refresh_token")


class OpenEOBackend(Block):
    """An openEO backend and the account the run-jobs flow uses on it."""

    _block_type_name = "openEO Backend"
    _block_type_slug = "openeo-backend"
    _description = "An openEO backend (root URL, job slots, quotas) and the credentials to use on it."

    url: str = Field(..., description="Root URL, e.g. https://openeo.dataspace.copernicus.eu")
    parallel_jobs: int = Field(2, ge=1, description="Maximum concurrently active jobs on this backend")
    max_parallel_starts: Optional[int] = Field(None, ge=1, description="Start tasks of this backend in flight at once in one run")
    max_starts_per_minute: Optional[float] = Field(
        None, gt=0, description="Job starts per minute on this account, spaced evenly (CDSE: 12). Off by default")
    max_concurrent_requests: Optional[int] = Field(
        None, ge=1, description="HTTP requests in progress at once on this account (CDSE: 2). Off by default")
    create_ahead: Optional[int] = Field(
        None, ge=0, description="Jobs kept created, not started, ready for the next free slot (default: parallel_jobs; "
        "0 for backends that count created jobs against a limit)")
    auth_type: AuthType = Field("none", description=AUTH_TYPES_HELP)
    username: Optional[str] = Field(None, description="Basic auth user name")
    client_id: Optional[str] = Field(None, description="OIDC client id")
    provider_id: Optional[str] = Field(None, description="OIDC provider id (default: the backend's default)")
    password: Optional[SecretStr] = Field(None, description="Basic auth password")
    token: Optional[SecretStr] = Field(None, description="Bearer token")
    client_secret: Optional[SecretStr] = Field(None, description="OIDC client secret")
    refresh_token: Optional[SecretStr] = Field(None, description="OIDC refresh token")

    def to_backend_config(self, name: str) -> BackendConfig:
        """The one backend model; its auth reads the secrets from this (already loaded) block."""
        config = BackendConfig.model_validate(
            {
                "name": name, "url": self.url, "parallel_jobs": self.parallel_jobs,
                "max_parallel_starts": self.max_parallel_starts, "max_starts_per_minute": self.max_starts_per_minute,
                "max_concurrent_requests": self.max_concurrent_requests, "create_ahead": self.create_ahead,
                "auth": {"type": self.auth_type, "username": self.username, "client_id": self.client_id,
                         "provider_id": self.provider_id},
            },
            context={SECRETS_FROM_BLOCK: True},
        )
        config.auth = config.auth.with_secret_source(self._secret_or_none)
        return config

    def connect(self, name: str) -> ManagedConnection:
        """The authenticated connection of this backend, or a SetupError saying what is wrong."""
        return connect_backend(self.to_backend_config(name))

    def secret(self, kind: str) -> str:
        value = self._secret_or_none(kind)
        if not value:
            raise SetupError(f"openEO backend block has no {kind} (auth type {self.auth_type!r})")
        return value

    def _secret_or_none(self, kind: str) -> Optional[str]:
        if kind not in SECRET_KINDS:
            raise ValueError(f"unknown secret kind {kind!r}")
        value = getattr(self, kind)
        return value.get_secret_value() if value is not None else None


def load_backend_block(name: str) -> OpenEOBackend:
    try:
        return OpenEOBackend.load(name)
    except (ValueError, KeyError) as exc:
        raise SetupError(
            f"backend {name!r} is not an OpenEOBackend block on this Prefect server "
            f"(create it, after `prefect block register -m flows.config.blocks`): {exc}",
            parameter="backends",
        ) from None


def resolve_backend(backend: Union[BackendConfig, dict, str]) -> BackendConfig:
    """An inline config (model or dict) as is; a string as the OpenEOBackend block of that name."""
    if isinstance(backend, BackendConfig):
        return backend
    if isinstance(backend, str):
        return load_backend_block(backend).to_backend_config(backend)
    return BackendConfig.model_validate(backend)
