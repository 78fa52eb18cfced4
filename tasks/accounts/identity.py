"""What one backend account is, and where its shared state lives on this machine.

An account is what a backend counts its limits against: the backend's origin and the user the
credentials log in as. Its identity is computed once, when a backend connects
(flows/setup.connect_backend), and is carried by the connection (`ManagedConnection.account`);
job slots, start turns and anything that names the account (logs, tags) use that one string.

    openeo.dataspace.copernicus.eu~6f1c0a2e-8d1b-4c3e-9a57-0b1e2f3a4b5c
    127.0.0.1:8080~alice

- origin: the host (lower case) and a port other than the scheme's default. The path is not part
  of it (`…/openeo/1.2` and the root are one backend), nor the scheme (http and https to one
  host reach one account).
- user: the `user_id` the backend's `/me` answers, i.e. the backend's own word for whose limits
  apply (two OIDC users of one client are two accounts; one service account reached by client
  credentials from a block or from openeo's env vars is one). When `/me` names nobody, the client
  id (client credentials, refresh token) or the basic user name; without auth, `anonymous`.

Safe to show: it holds no credential. A password, token or client secret never enters it; the
user id is the identifier the backend itself shows in `/me` (on CDSE an opaque UUID; elsewhere
possibly a user name), the same thing a job listing or a support ticket carries.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

# The one state-folder setting: job-slot ledgers and start turns of every account live under it.
STATE_DIR_ENV = "OPENEO_JOBS_STATE_DIR"
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@:-]+")


def origin(url: str) -> str:
    """`host[:port]` of a backend URL, normalised: lower case, default port dropped, no path."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and port != DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{host}:{port}"
    return host


def account_id(url: str, user_id: Optional[str] = None, client_id: Optional[str] = None,
               username: Optional[str] = None) -> str:
    """The account's identity: `origin~user` (see the module docstring for which user)."""
    who = next((str(w) for w in (user_id, client_id, username) if w not in (None, "")), "anonymous")
    return f"{origin(url)}~{_UNSAFE.sub('_', who)}"


def state_dir() -> Path:
    """`$OPENEO_JOBS_STATE_DIR`, else `$XDG_STATE_HOME/openeo-prefect-jobs` (~/.local/state/…)."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "openeo-prefect-jobs"


def account_dir(account: str, root: Optional[Path] = None) -> Path:
    """The folder of one account's shared state (slot ledger, start turns) under the state folder."""
    return (root or state_dir()) / "accounts" / account.replace(":", "_")
