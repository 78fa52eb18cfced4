"""How each auth type logs in to a backend, the way openEO users log in (openeo's own methods).

- `oidc`: as openeo's `connection.authenticate_oidc()`: a refresh token from openeo's token store,
  else the device-code login, but only when a terminal is attached; without one (a deployment, a
  worker) it fails at once and says how to log in once, instead of polling for minutes;
- `env`: openeo's `OPENEO_AUTH_METHOD`, `OPENEO_AUTH_CLIENT_ID`, `OPENEO_AUTH_CLIENT_SECRET`,
  `OPENEO_AUTH_PROVIDER_ID`, read by `authenticate_oidc()` itself;
- `oidc_client_credentials`, `oidc_refresh_token`, `basic`, `bearer`: secrets from env vars,
  Secret blocks or the backend's block, read once here.
"""
from __future__ import annotations

import os
import sys

from openeo.rest.auth.auth import BearerAuth
from openeo.rest import OpenEoClientException

from flows.config.params import BackendConfig, SetupError
from tasks.connections import ManagedConnection

ENV_AUTH_VARIABLES = ("OPENEO_AUTH_METHOD", "OPENEO_AUTH_CLIENT_ID", "OPENEO_AUTH_CLIENT_SECRET")
ENV_AUTH_METHODS = ("client_credentials",)  # what openeo 0.53's authenticate_oidc() handles


def terminal_attached() -> bool:
    """Whether a person can follow a device-code login here (both stdin and stdout are a terminal)."""
    try:
        return bool(sys.stdin and sys.stdin.isatty() and sys.stdout and sys.stdout.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def login_once_hint(url: str) -> str:
    return f"python -c \"import openeo; openeo.connect('{url}').authenticate_oidc()\""


def log_in(connection: ManagedConnection, backend: BackendConfig) -> None:
    """Authenticate `connection` as `backend.auth` says; SetupError for what the user must fix."""
    auth = backend.auth
    if auth.type == "basic":
        connection.authenticate_basic(auth.username, auth.read_secret("password"))
    elif auth.type == "bearer":
        connection.auth = BearerAuth(bearer=auth.read_secret("token"))
    elif auth.type == "oidc_client_credentials":
        connection.authenticate_oidc_client_credentials(
            client_id=auth.client_id, client_secret=auth.read_secret("client_secret"), provider_id=auth.provider_id)
    elif auth.type == "oidc_refresh_token":
        connection.authenticate_oidc_refresh_token(
            client_id=auth.client_id, refresh_token=auth.read_secret("refresh_token"), provider_id=auth.provider_id)
    elif auth.type == "env":
        _log_in_from_env(connection, backend)
    elif auth.type == "oidc":
        _log_in_oidc(connection, backend)


def _log_in_from_env(connection: ManagedConnection, backend: BackendConfig) -> None:
    missing = [name for name in ENV_AUTH_VARIABLES if not os.environ.get(name)]
    if missing:
        raise SetupError(
            f"backend {backend.name!r}: auth type 'env' needs the environment variable(s) {', '.join(missing)} "
            f"(as openeo's authenticate_oidc() reads them; OPENEO_AUTH_PROVIDER_ID is optional)",
            parameter="backends")
    method = os.environ["OPENEO_AUTH_METHOD"]
    if method not in ENV_AUTH_METHODS:
        raise SetupError(
            f"backend {backend.name!r}: OPENEO_AUTH_METHOD={method!r} is not a method openeo's authenticate_oidc() "
            f"handles (use {' or '.join(ENV_AUTH_METHODS)})", parameter="backends")
    connection.authenticate_oidc(provider_id=backend.auth.provider_id)


def _log_in_oidc(connection: ManagedConnection, backend: BackendConfig) -> None:
    """authenticate_oidc()'s own order (stored refresh token, then device code) without its env-var
    branch: OPENEO_AUTH_* belong to backends with auth type 'env', not to every backend of a run."""
    auth = backend.auth
    try:
        connection.authenticate_oidc_refresh_token(
            client_id=auth.client_id, provider_id=auth.provider_id, store_refresh_token=True)
        return
    except OpenEoClientException as exc:
        if not terminal_attached():
            raise SetupError(
                f"backend {backend.name!r}: auth 'oidc' found no usable refresh token in openeo's token store "
                f"({exc}) and no terminal is attached for a device-code login. Log in once on this machine, as "
                f"the user that runs the flow: {login_once_hint(backend.url)}", parameter="backends") from None
    # A person at this terminal can follow the device-code login; openeo stores the refresh token.
    connection.authenticate_oidc_device(client_id=auth.client_id, provider_id=auth.provider_id,
                                        store_refresh_token=True)
