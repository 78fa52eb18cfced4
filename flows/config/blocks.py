"""A Prefect block for one openEO backend: URL, job slots, quotas, auth method and its secrets.

Register the block type once per Prefect server, then create blocks in the UI or in Python:

    prefect block register -m flows.config.blocks

    from flows.config.blocks import OpenEOBackend
    OpenEOBackend(url="https://openeo.dataspace.copernicus.eu", parallel_jobs=2, max_starts_per_minute=12,
                  max_concurrent_requests=2, auth_type="oidc_client_credentials", client_id="...",
                  client_secret="...").save("cdse")

(`OpenEOBackend(backend={"url": ..., "auth": {"type": ...}}, ...)` is the same block.)
A run then names the block instead of an inline config: `backends=["cdse"]`. The block's
document name becomes the backend name in the job DB. Inline configs and blocks validate into
one model, `BackendConfig`; the block builds the authenticated connection itself
(`OpenEOBackend.connect`, as prefect-dbt's credentials blocks build their clients). The secrets
stay in the block: the flow run's parameters only hold the name, and each secret is read once,
when the flow connects.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr, model_validator

from flows.config.params import SECRETS_FROM_BLOCK, AuthConfig, BackendConfig, BackendSettings, SetupError
from flows.config.setup import connect_backend
from tasks.connections import ManagedConnection

SECRET_KINDS = ("password", "token", "client_secret", "refresh_token")
# The flat form of blocks saved before `backend` was one field: `auth_type` is `backend.auth.type`.
FLAT_AUTH = {"auth_type": "type"}


class OpenEOBackend(Block):
    """An openEO backend and the account the run-jobs flow uses on it."""

    _block_type_name = "openEO Backend"
    _block_type_slug = "openeo-backend"
    _description = "An openEO backend (root URL, job slots, quotas) and the credentials to use on it."

    backend: BackendSettings = Field(
        ..., description="Root URL, job slots, quotas and how to log in (auth: type, username, client_id, provider_id; "
        "the secret itself goes in the fields below, unless an environment variable or Secret block is named)")
    password: Optional[SecretStr] = Field(None, description="Basic auth password")
    token: Optional[SecretStr] = Field(None, description="Bearer token")
    client_secret: Optional[SecretStr] = Field(None, description="OIDC client secret")
    refresh_token: Optional[SecretStr] = Field(None, description="OIDC refresh token")

    @model_validator(mode="before")
    @classmethod
    def _compose(cls, data: Any) -> Any:
        """`backend` as `BackendSettings`, its secrets allowed to be this block's. Blocks saved before
        it was one field (`url`, `parallel_jobs`, `auth_type`, `username`, ... at the top) still load,
        and `OpenEOBackend(url=..., auth_type=..., password=...)` still makes one."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        backend = plain(data.pop("backend", None))
        settings = {key: data.pop(key) for key in BackendSettings.model_fields if key in data}
        auth = {FLAT_AUTH.get(key, key): data.pop(key) for key in (*FLAT_AUTH, *AuthConfig.model_fields) if key in data}
        backend = {**settings, **backend, "auth": {**auth, **plain(backend.get("auth"))}}
        data["backend"] = BackendSettings.model_validate(backend, context={SECRETS_FROM_BLOCK: True})
        return data

    def to_backend_config(self, name: str) -> BackendConfig:
        """The one backend model; its auth reads the secrets from this (already loaded) block."""
        config = BackendConfig.model_validate({"name": name, **self.backend.model_dump()},
                                              context={SECRETS_FROM_BLOCK: True})
        config.auth = config.auth.with_secret_source(self._secret_or_none)
        return config

    def connect(self, name: str) -> ManagedConnection:
        """The authenticated connection of this backend, or a SetupError saying what is wrong."""
        return connect_backend(self.to_backend_config(name))

    def secret(self, kind: str) -> str:
        value = self._secret_or_none(kind)
        if not value:
            raise SetupError(f"openEO backend block has no {kind} (auth type {self.backend.auth.type!r})")
        return value

    def _secret_or_none(self, kind: str) -> Optional[str]:
        if kind not in SECRET_KINDS:
            raise ValueError(f"unknown secret kind {kind!r}")
        value = getattr(self, kind)
        return value.get_secret_value() if value is not None else None


def plain(value: Any) -> dict:
    """A model, a dict or nothing as a dict of what was given."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    return dict(value or {})


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
