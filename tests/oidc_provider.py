"""A real OpenID Connect provider on loopback for tests, built on authlib's authorization server.

Grants: client credentials (confidential clients), refresh token (rotated), device code (the
"log in once" flow of openeo's `authenticate_oidc()`; the test approves the user code, as the
user would in a browser). Opaque access tokens that expire after `access_token_ttl` seconds
(30-60 s in the tests, so a longer run proves renewal), a userinfo endpoint that checks them,
and a discovery document. Thread only (werkzeug), stopped by the `with` block.

Why not `oidc-provider-mock` from PyPI: its releases for Python 3.11 (<= 0.3.4) only offer the
authorization-code and refresh-token grants, and renewed tokens live one hour whatever
`access_token_max_age` says; 0.4.x needs Python >= 3.12.
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Set, Tuple

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceCredentialDict
from werkzeug.serving import WSGIRequestHandler, make_server

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: Optional[str]  # None: a public client (device code + refresh token, as openeo's default clients)
    grant_types: Tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> Optional[str]:
        return None

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("openid", "email", "profile")) or "openid"

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(self.client_secret, client_secret or "")

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class RefreshToken(TokenMixin):
    token: str
    client_id: str
    sub: str
    scope: str
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return self.revoked


@dataclass
class Store:
    clients: Dict[str, Client] = field(default_factory=dict)
    access_tokens: Dict[str, Tuple[str, float]] = field(default_factory=dict)  # token -> (sub, expires at)
    refresh_tokens: Dict[str, RefreshToken] = field(default_factory=dict)
    device_codes: Dict[str, dict] = field(default_factory=dict)
    approved_user_codes: Dict[str, str] = field(default_factory=dict)  # user code -> sub
    issued: Dict[str, int] = field(default_factory=dict)  # grant type -> access tokens issued
    userinfo_checks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class OidcProvider:
    """A running provider: `issuer`, client registration, test-side approval, counters."""

    def __init__(self, access_token_ttl: float = 45.0, host: str = "127.0.0.1"):
        self.access_token_ttl = access_token_ttl
        self.store = Store()
        self._app = _make_app(self)
        self._server = make_server(host, 0, self._app, threaded=True, request_handler=_QuietHandler)
        self.issuer = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"oidc-provider-{self._server.server_port}", daemon=True)

    def start(self) -> "OidcProvider":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> "OidcProvider":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------- test side
    def add_client(self, client_id: str, client_secret: Optional[str] = None,
                   grant_types: Tuple[str, ...] = ("client_credentials",)) -> Client:
        client = Client(client_id, client_secret, tuple(grant_types))
        with self.store.lock:
            self.store.clients[client_id] = client
        return client

    def approve(self, user_code: str, sub: str) -> None:
        """The user opened the verification URL and approved `user_code` as `sub`."""
        with self.store.lock:
            self.store.approved_user_codes[user_code] = sub

    def pending_user_codes(self) -> Set[str]:
        with self.store.lock:
            return {d["user_code"] for d in self.store.device_codes.values()} - set(self.store.approved_user_codes)

    def issue_refresh_token(self, client_id: str, sub: str) -> str:
        """A refresh token as a finished interactive login would leave it."""
        token = secrets.token_urlsafe(32)
        with self.store.lock:
            self.store.refresh_tokens[token] = RefreshToken(token, client_id, sub, "openid")
        return token

    def access_tokens_issued(self) -> Dict[str, int]:
        with self.store.lock:
            return dict(self.store.issued)

    def all_tokens(self) -> Set[str]:
        """Every access and refresh token ever issued (to look for leaks)."""
        with self.store.lock:
            return set(self.store.access_tokens) | set(self.store.refresh_tokens)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # one line per request would drown test output
        pass


def _make_app(provider: OidcProvider) -> flask.Flask:
    store = provider.store
    app = flask.Flask(__name__)
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
        grant: int(provider.access_token_ttl) for grant in ("client_credentials", "refresh_token", DEVICE_GRANT)}

    def query_client(client_id: str) -> Optional[Client]:
        with store.lock:
            return store.clients.get(client_id)

    def save_token(token: dict, request) -> None:
        client = request.client
        sub = request.user if isinstance(request.user, str) else client.client_id  # client credentials: no user
        grant = request.payload.grant_type if request.payload else "?"
        with store.lock:
            store.access_tokens[token["access_token"]] = (sub, time.time() + token["expires_in"])
            store.issued[grant] = store.issued.get(grant, 0) + 1
            if "refresh_token" in token:
                store.refresh_tokens[token["refresh_token"]] = RefreshToken(
                    token["refresh_token"], client.client_id, sub, token.get("scope") or "openid")

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)

    class ClientCredentials(grants.ClientCredentialsGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    class Refresh(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
        # No rotation: openeo renews with the refresh token it logged in with (as Keycloak, CDSE's
        # provider, allows by default), so the old one must stay valid.
        INCLUDE_NEW_REFRESH_TOKEN = False

        def authenticate_refresh_token(self, refresh_token: str) -> Optional[RefreshToken]:
            with store.lock:
                token = store.refresh_tokens.get(refresh_token)
            return token if token is not None and not token.revoked else None

        def authenticate_user(self, credential: RefreshToken) -> str:
            return credential.sub

        def revoke_old_credential(self, credential: RefreshToken) -> None:
            pass  # see INCLUDE_NEW_REFRESH_TOKEN

    class DeviceCode(DeviceCodeGrant):
        def query_device_credential(self, device_code: str):
            with store.lock:
                data = store.device_codes.get(device_code)
            return DeviceCredentialDict(data) if data else None

        def query_user_grant(self, user_code: str):
            with store.lock:
                sub = store.approved_user_codes.get(user_code)
            return (sub, True) if sub else None

        def should_slow_down(self, credential) -> bool:
            return False

    class DeviceAuthorization(DeviceAuthorizationEndpoint):
        USER_CODE_TYPE = "digital"
        EXPIRES_IN = 300
        INTERVAL = 1

        def get_verification_uri(self) -> str:
            return provider.issuer + "/device"

        def save_device_credential(self, client_id: str, scope: str, data: dict) -> None:
            with store.lock:
                store.device_codes[data["device_code"]] = {
                    "client_id": client_id, "scope": scope or "openid", "expires_at": int(time.time()) + 300, **data}

    server.register_grant(ClientCredentials)
    server.register_grant(Refresh)
    server.register_grant(DeviceCode)
    server.register_endpoint(DeviceAuthorization)

    @app.get("/.well-known/openid-configuration")
    def discovery():
        issuer = provider.issuer
        return flask.jsonify({
            "issuer": issuer,
            "token_endpoint": issuer + "/token",
            "userinfo_endpoint": issuer + "/userinfo",
            "device_authorization_endpoint": issuer + "/device_authorization",
            "jwks_uri": issuer + "/jwks",
            "scopes_supported": ["openid", "email", "profile"],
            "grant_types_supported": ["client_credentials", "refresh_token", DEVICE_GRANT],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        })

    @app.get("/jwks")
    def jwks():
        return flask.jsonify({"keys": []})  # access tokens are opaque: checked at /userinfo

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.post("/device_authorization")
    def device_authorization():
        return server.create_endpoint_response(DeviceAuthorization.ENDPOINT_NAME)

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo():
        header = flask.request.headers.get("Authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        with store.lock:
            store.userinfo_checks += 1
            entry = store.access_tokens.get(token)
        if entry is None or entry[1] <= time.time():
            return flask.jsonify({"error": "invalid_token"}), 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        return flask.jsonify({"sub": entry[0]})

    return app


def started_provider(access_token_ttl: float = 45.0) -> Iterator[OidcProvider]:
    """For fixtures: `yield from started_provider(40)`; stopped when the fixture ends."""
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    provider = OidcProvider(access_token_ttl).start()
    try:
        yield provider
    finally:
        provider.stop()


PUBLIC_CLIENT = "openeo-public"  # the backend's default client for device code / refresh token logins


def started_oidc_simulator(provider: OidcProvider):
    """A simulator that trusts `provider` (no basic auth), with a confidential client `robot` and the
    public default client; yields it and stops it."""
    from simulator import SimulatorConfig, start_simulator

    provider.add_client("robot", "robot-secret", ("client_credentials",))
    provider.add_client(PUBLIC_CLIENT, None, ("refresh_token", DEVICE_GRANT))
    sim = start_simulator(SimulatorConfig(queue_time=0.1, run_time=0.3, oidc_issuer=provider.issuer,
                                          oidc_default_client_id=PUBLIC_CLIENT, basic_auth=False))
    yield sim
    sim.stop()
