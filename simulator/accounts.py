"""Who a request is: HTTP Basic logins and their tokens, openEO bearers (basic and OIDC), the static token."""
from __future__ import annotations

import base64
import secrets
import threading
import time
from collections import defaultdict
from typing import Dict, Optional, Set, Tuple

from simulator.config import SimulatorConfig
from simulator.messages import ApiError, Request
from simulator.oidc import TOKEN_INVALID, OidcTrust

ANONYMOUS = "<anonymous>"


def bearer(req: Request) -> Optional[Tuple[str, str, str]]:
    """(method, provider, token) of an openEO bearer: "basic//TOKEN", "oidc/PROVIDER/TOKEN"; a plain
    token counts as basic."""
    auth = req.headers.get("Authorization") or ""
    if not auth.startswith("Bearer "):
        return None
    value = auth[len("Bearer "):].strip()
    parts = value.split("/", 2)
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return "basic", "", value


def basic_credentials(req: Request) -> Optional[Tuple[str, str]]:
    """(user name, password) of an HTTP Basic header; None without one; 400 when malformed."""
    auth = req.headers.get("Authorization") or ""
    if not auth.startswith("Basic "):
        return None
    try:
        username, password = base64.b64decode(auth[6:]).decode().split(":", 1)
    except Exception:
        raise ApiError(400, "AuthenticationSchemeInvalid", "Malformed HTTP Basic credentials.")
    return username, password


class Accounts:
    """Logins and the users they prove. Tokens and users survive `SimState.reset` (clients stay logged in)."""

    def __init__(self, config: SimulatorConfig, lock: threading.RLock):
        self.config = config
        self.lock = lock
        self.tokens: Dict[str, Tuple[str, Optional[float]]] = {}  # token -> (user, expires, monotonic)
        self.users: Dict[str, int] = {}  # username -> logins
        self.oidc_tokens_per_user: Dict[str, Set[int]] = defaultdict(set)  # sub -> access tokens seen (hashed)
        self._oidc: Optional[OidcTrust] = None
        self._oidc_lock = threading.Lock()

    def forget_oidc_tokens(self) -> None:
        with self.lock:
            self.oidc_tokens_per_user = defaultdict(set)

    # ------------------------------------------------------------------ HTTP Basic
    def login(self, username: str, password: str) -> str:
        if password != self.config.password:
            raise ApiError(403, "CredentialsInvalid", "Credentials are not correct.")
        token = secrets.token_urlsafe(24)
        ttl = self.config.token_ttl
        with self.lock:
            self.tokens[token] = (username, time.monotonic() + ttl if ttl is not None else None)
            self.users[username] = self.users.get(username, 0) + 1
        return token

    def user_for_token(self, token: str) -> str:
        cfg = self.config
        if cfg.static_token and token == cfg.static_token:
            return cfg.static_token_user
        with self.lock:
            entry = self.tokens.get(token)
        if entry is None:
            raise ApiError(403, "TokenInvalid", TOKEN_INVALID)
        user, expires = entry
        if expires is not None and time.monotonic() >= expires:
            raise ApiError(403, "TokenInvalid", TOKEN_INVALID)
        return user

    # ------------------------------------------------------------------------ OIDC
    def oidc(self) -> Optional[OidcTrust]:
        """The trusted OIDC provider of the current config (None when OIDC is off)."""
        cfg = self.config
        with self._oidc_lock:
            if cfg.oidc_issuer is None:
                self._oidc = None
            elif self._oidc is None or self._oidc.issuer != cfg.oidc_issuer.rstrip("/"):
                self._oidc = OidcTrust(cfg.oidc_issuer, cfg.oidc_cache_seconds)
            if self._oidc is not None:
                self._oidc.cache_seconds = cfg.oidc_cache_seconds
            return self._oidc

    def user_for_bearer(self, found: Tuple[str, str, str]) -> str:
        method, provider, token = found
        if method == "oidc":
            trust = self.oidc()
            if trust is None or provider != self.config.oidc_provider_id:
                raise ApiError(403, "TokenInvalid", TOKEN_INVALID)
            user = trust.user_for(token)
            with self.lock:
                self.oidc_tokens_per_user[user].add(hash(token))
            return user
        return self.user_for_token(token)

    # ------------------------------------------------------------- per request
    def quota_key(self, req: Request) -> str:
        """The user a request counts against in quotas, before the route's own login check: the Basic
        user name, or the bearer's user (an invalid bearer is remembered for `authenticate`)."""
        if req.user is not None:
            return req.user
        auth = req.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except Exception:
                return ANONYMOUS
        found = bearer(req)
        if found and req.auth_error is None:
            try:
                req.user = self.user_for_bearer(found)
                return req.user
            except ApiError as exc:
                req.auth_error = exc
        return ANONYMOUS

    def authenticate(self, req: Request) -> str:
        if req.user is not None:
            return req.user
        if req.auth_error is not None:
            raise req.auth_error
        found = bearer(req)
        if not found:
            raise ApiError(401, "AuthenticationRequired", "Unauthorized: authentication required.")
        return self.user_for_bearer(found)
