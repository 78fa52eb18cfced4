"""OIDC mode: trust one provider, as openEO backends do (`/credentials/oidc`, `Bearer oidc/<id>/<token>`).

An access token is checked at the provider's userinfo endpoint (found through its discovery
document) and trusted for `oidc_cache_seconds` afterwards, like a backend caching token checks;
the user is the token's `sub` claim. Stdlib HTTP only, so the simulator needs no extra package.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

from simulator.messages import ApiError

TOKEN_INVALID = "Authorization token has expired or is invalid. Please authenticate again."


class OidcTrust:
    """Checks access tokens of one OIDC provider (the simulator's `oidc_issuer`)."""

    def __init__(self, issuer: str, cache_seconds: float):
        self.issuer = issuer.rstrip("/")
        self.cache_seconds = cache_seconds
        self._userinfo_url: Optional[str] = None
        self._cache: Dict[str, Tuple[str, float]] = {}  # token -> (sub, trusted until, monotonic)
        self._lock = threading.Lock()
        self.checks = 0  # userinfo requests made

    def provider_document(self, provider_id: str, default_client_id: Optional[str]) -> Dict[str, Any]:
        """This provider as `/credentials/oidc` lists it."""
        provider: Dict[str, Any] = {
            "id": provider_id,
            "issuer": self.issuer,
            "title": "Simulated OIDC provider",
            "scopes": ["openid"],
        }
        if default_client_id:
            provider["default_clients"] = [{
                "id": default_client_id,
                "grant_types": ["urn:ietf:params:oauth:grant-type:device_code+pkce", "refresh_token"],
            }]
        return provider

    def user_for(self, access_token: str) -> str:
        """The `sub` of a valid access token; 403 TokenInvalid otherwise."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(access_token)
        if cached is not None and cached[1] > now:
            return cached[0]
        sub = self._ask_userinfo(access_token)
        with self._lock:
            self._cache[access_token] = (sub, now + self.cache_seconds)
            if len(self._cache) > 10_000:  # expired entries are dropped once in a while
                self._cache = {t: v for t, v in self._cache.items() if v[1] > now}
        return sub

    def _ask_userinfo(self, access_token: str) -> str:
        request = urllib.request.Request(self._userinfo(), headers={"Authorization": f"Bearer {access_token}"})
        self.checks += 1
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                claims = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (400, 401, 403):
                raise ApiError(403, "TokenInvalid", TOKEN_INVALID) from None
            raise ApiError(503, "ServiceUnavailable", f"OIDC provider answered {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ApiError(503, "ServiceUnavailable", f"OIDC provider not reachable: {exc}") from None
        sub = claims.get("sub") if isinstance(claims, dict) else None
        if not sub:
            raise ApiError(403, "TokenInvalid", TOKEN_INVALID)
        return str(sub)

    def _userinfo(self) -> str:
        if self._userinfo_url is None:
            url = self.issuer + "/.well-known/openid-configuration"
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    self._userinfo_url = json.loads(response.read())["userinfo_endpoint"]
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                raise ApiError(503, "ServiceUnavailable", f"OIDC discovery at {url} failed: {exc}") from None
        return self._userinfo_url
