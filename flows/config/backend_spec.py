"""The CLI's `--backend name=URL,key=value,...` as a backend config dict (validated as `BackendConfig`).

    --backend cdse=https://openeo.dataspace.copernicus.eu,parallel_jobs=2,max_starts_per_minute=12,\
max_concurrent_requests=2,auth=oidc

Every error is one line naming the option as written, before any job is created.
"""
from __future__ import annotations

import argparse
from typing import Dict, get_args

from pydantic import ValidationError

from flows.config.params import AuthType, BackendConfig

BACKEND_HELP = (
    "name=URL[,parallel_jobs=N][,max_starts_per_minute=R][,max_concurrent_requests=N][,max_parallel_starts=N]"
    "[,create_ahead=N]"
    "[,auth=oidc|env|oidc_client_credentials|oidc_refresh_token|basic|bearer|none][,user=U][,client_id=ID]"
    "[,provider_id=P][,<secret>_env=VAR | <secret>_block=BLOCK for password, token, client_secret, refresh_token]; "
    "repeatable"
)
INTEGER_OPTIONS = ("parallel_jobs", "max_concurrent_requests", "max_parallel_starts", "create_ahead")
NUMBER_OPTIONS = ("max_starts_per_minute",)
AUTH_OPTIONS = ("client_id", "provider_id") + tuple(
    f"{secret}_{source}" for secret in ("password", "token", "client_secret", "refresh_token")
    for source in ("env", "block"))
# Options that imply an auth type when `auth=` is not given.
IMPLIED_TYPE = {"username": "basic", "token_env": "bearer", "token_block": "bearer",
                "client_secret_env": "oidc_client_credentials", "client_secret_block": "oidc_client_credentials",
                "refresh_token_env": "oidc_refresh_token", "refresh_token_block": "oidc_refresh_token"}


def parse_backend(text: str) -> Dict[str, object]:
    """`name=URL[,key=value...]` -> a backend config dict; argparse.ArgumentTypeError on any mistake."""
    head, *options = text.split(",")
    name, sep, url = head.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"--backend {text!r}: expected name=URL[,parallel_jobs=N,...]")
    backend: Dict[str, object] = {"name": name, "url": url}
    auth: Dict[str, object] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--backend {text!r}: option {option!r} is not key=value")
        if key in INTEGER_OPTIONS or key in NUMBER_OPTIONS:
            kind = int if key in INTEGER_OPTIONS else float
            try:
                backend[key] = kind(value)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise argparse.ArgumentTypeError(f"--backend {text!r}: {key} must be {what}") from None
        elif key == "auth":
            if value not in get_args(AuthType):
                raise argparse.ArgumentTypeError(
                    f"--backend {text!r}: unknown auth type {value!r} (one of: {', '.join(get_args(AuthType))})")
            auth["type"] = value
        elif key in ("user", "username"):
            auth["username"] = value
        elif key in AUTH_OPTIONS:
            auth[key] = value
        else:
            raise argparse.ArgumentTypeError(f"--backend {text!r}: unknown option {key!r}")
    if auth:
        implied = [IMPLIED_TYPE[k] for k in auth if k in IMPLIED_TYPE]
        auth = {"type": auth.get("type") or (implied[0] if implied else "none"), **auth}
        backend["auth"] = auth
    try:
        BackendConfig.model_validate(backend)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "backend"
        message = first["msg"].removeprefix("Value error, ")
        raise argparse.ArgumentTypeError(f"--backend {text!r}: {where}: {message}") from None
    return backend
