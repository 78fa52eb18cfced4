"""A Prefect block for one openEO backend: URL, job slots, auth method and its secrets.

Register the block type once per Prefect server, then create blocks in the UI or in Python:

    prefect block register -m flows.blocks

    from flows.blocks import OpenEOBackend
    OpenEOBackend(url="https://openeo.dataspace.copernicus.eu", parallel_jobs=4,
                  auth_type="oidc_client_credentials", client_id="...", client_secret="...").save("cdse")

A run then names the block instead of an inline config: `backends=["cdse"]`. The block's
document name becomes the backend name in the job DB. The secrets stay in the block: the flow
run's parameters only hold the name, and the secret is read when the flow connects.
"""
from __future__ import annotations

from typing import Optional

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from flows.params import AuthConfig, AuthType, BackendConfig, SetupError

SECRET_KINDS = ("password", "token", "client_secret", "refresh_token")


class OpenEOBackend(Block):
    """An openEO backend and the account the run-jobs flow uses on it."""

    _block_type_name = "openEO Backend"
    _block_type_slug = "openeo-backend"
    _description = "An openEO backend (root URL, job slots) and the credentials to use on it."

    url: str = Field(..., description="Root URL, e.g. https://openeo.dataspace.copernicus.eu")
    parallel_jobs: int = Field(2, ge=1, description="Maximum concurrently active jobs on this backend")
    max_parallel_starts: Optional[int] = Field(None, ge=1, description="Cap on concurrent start tasks")
    auth_type: AuthType = Field(
        "none", description="Authentication method"
    )
    username: Optional[str] = Field(None, description="Basic auth user name")
    client_id: Optional[str] = Field(None, description="OIDC client id")
    provider_id: Optional[str] = Field(None, description="OIDC provider id (default: the backend's default)")
    password: Optional[SecretStr] = Field(None, description="Basic auth password")
    token: Optional[SecretStr] = Field(None, description="Bearer token")
    client_secret: Optional[SecretStr] = Field(None, description="OIDC client secret")
    refresh_token: Optional[SecretStr] = Field(None, description="OIDC refresh token")

    def to_backend_config(self, name: str) -> BackendConfig:
        """The flow's config for this backend; its auth refers back to the block for the secret."""
        auth = AuthConfig(
            type=self.auth_type, username=self.username, client_id=self.client_id,
            provider_id=self.provider_id, backend_block=name if self.auth_type != "none" else None,
        )
        return BackendConfig(
            name=name, url=self.url, parallel_jobs=self.parallel_jobs,
            max_parallel_starts=self.max_parallel_starts, auth=auth,
        )

    def secret(self, kind: str) -> str:
        if kind not in SECRET_KINDS:
            raise ValueError(f"unknown secret kind {kind!r}")
        value = getattr(self, kind)
        if value is None or not value.get_secret_value():
            raise SetupError(f"openEO backend block has no {kind} (auth type {self.auth_type!r})")
        return value.get_secret_value()


def load_backend_block(name: str) -> OpenEOBackend:
    try:
        return OpenEOBackend.load(name)
    except (ValueError, KeyError) as exc:
        raise SetupError(
            f"backend {name!r} is not an OpenEOBackend block on this Prefect server "
            f"(create it, after `prefect block register -m flows.blocks`): {exc}"
        ) from None


def resolve_backend(backend) -> BackendConfig:
    """An inline config (model or dict) as is; a string as the OpenEOBackend block of that name."""
    if isinstance(backend, BackendConfig):
        return backend
    if isinstance(backend, str):
        return load_backend_block(backend).to_backend_config(backend)
    return BackendConfig.model_validate(backend)
