"""Request handling: routing, auth, quotas and fault injection, openEO responses (stdlib only;
the HTTP server itself is simulator/httpd.py)."""
from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from simulator import catalog
from simulator.oidc import TOKEN_INVALID, OidcTrust
from simulator.state import ApiError, SimState, asset_bytes, asset_names, iso

API_PREFIX = "/openeo/1.2"


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list -> JSON, bytes -> raw
    headers: Dict[str, str] = field(default_factory=dict)
    stream: Optional[Iterable[bytes]] = None  # raw body chunks; requires Content-Length header
    on_sent: Optional[Callable[[], None]] = None  # called once the response is written (or failed)


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, List[str]]
    headers: Any
    body: bytes
    params: Dict[str, str]
    user: Optional[str] = None
    auth_error: Optional[ApiError] = None  # a bearer already found invalid (checked once per request)

    def json(self) -> Dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise ApiError(400, "BadRequest", "Request body is not valid JSON.")
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "Request body must be a JSON object.")
        return data

    def arg(self, name: str) -> Optional[str]:
        values = self.query.get(name)
        return values[0] if values else None


def throttled(chunks: Iterable[bytes], bytes_per_second: float, step: int = 16384) -> Iterable[bytes]:
    """`chunks` re-cut into `step`-byte pieces sent no faster than `bytes_per_second` (a slow link)."""
    started, sent = time.monotonic(), 0
    for chunk in chunks:
        for first in range(0, len(chunk), step):
            piece = chunk[first:first + step]
            ahead = (sent + len(piece)) / bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            sent += len(piece)
            yield piece


def error_body(code: str, message: str) -> Dict[str, Any]:
    return {"id": uuid.uuid4().hex, "code": code, "message": message, "links": []}


def _retry_after_header(seconds: Optional[float]) -> Dict[str, str]:
    # HTTP delta-seconds must be an integer (urllib3 rejects fractions).
    return {} if seconds is None else {"Retry-After": str(max(0, math.ceil(seconds)))}


@dataclass
class Route:
    method: str
    template: str  # counter key, e.g. "/jobs/{id}"
    regex: "re.Pattern[str]"
    handler: Callable[["Router", Request], Response]
    auth: bool = True
    control: bool = False  # /_sim/*: never faulted


def _compile(template: str) -> "re.Pattern[str]":
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return re.compile("^" + pattern + "$")


class Router:
    """Maps requests to handlers and applies auth and fault injection."""

    def __init__(self, state: SimState, root_url: str):
        self.state = state
        self.root_url = root_url
        self.api_url = root_url + API_PREFIX + "/"
        self.routes: List[Route] = []
        self._oidc: Optional[OidcTrust] = None
        self._oidc_lock = threading.Lock()
        r = self._add
        r("GET", "/.well-known/openeo", Router.well_known, api=False, auth=False)
        r("GET", "/", Router.capabilities, auth=False)
        r("GET", "", Router.capabilities, auth=False)
        r("GET", "/credentials/basic", Router.credentials_basic, auth=False)
        r("GET", "/credentials/oidc", Router.credentials_oidc, auth=False)
        r("GET", "/me", Router.me)
        r("GET", "/collections", Router.collections, auth=False)
        r("GET", "/collections/{id}", Router.collection, auth=False)
        r("GET", "/processes", Router.processes, auth=False)
        r("GET", "/file_formats", Router.file_formats, auth=False)
        r("POST", "/jobs", Router.create_job)
        r("GET", "/jobs", Router.list_jobs)
        r("GET", "/jobs/{id}", Router.describe_job)
        r("PATCH", "/jobs/{id}", Router.update_job)
        r("DELETE", "/jobs/{id}", Router.delete_job)
        r("POST", "/jobs/{id}/results", Router.start_job)
        r("DELETE", "/jobs/{id}/results", Router.cancel_job)
        r("GET", "/jobs/{id}/results", Router.results)
        r("GET", "/jobs/{id}/results/assets/{name}", Router.job_asset)
        r("GET", "/jobs/{id}/logs", Router.logs)
        r("GET", "/_assets/{job_id}/{name}", Router.public_asset, api=False, auth=False)
        r("GET", "/_sim/config", Router.sim_get_config, api=False, auth=False, control=True)
        r("PATCH", "/_sim/config", Router.sim_patch_config, api=False, auth=False, control=True)
        r("GET", "/_sim/counters", Router.sim_counters, api=False, auth=False, control=True)
        r("POST", "/_sim/reset", Router.sim_reset, api=False, auth=False, control=True)
        r("POST", "/_sim/outage", Router.sim_outage, api=False, auth=False, control=True)

    def _add(self, method: str, template: str, handler: Callable, api: bool = True, auth: bool = True,
             control: bool = False) -> None:
        full = (API_PREFIX + template) if api else template
        self.routes.append(Route(method, template or "/", _compile(full), handler, auth, control))

    def match(self, method: str, path: str) -> Tuple[Optional[Route], Dict[str, str], bool]:
        """Return (route, params, path_exists)."""
        lookup = "GET" if method == "HEAD" else method
        exists = False
        for route in self.routes:
            m = route.regex.match(path)
            if m:
                exists = True
                if route.method == lookup:
                    return route, m.groupdict(), True
        return None, {}, exists

    # --------------------------------------------------------------- dispatch
    def dispatch(self, method: str, raw_path: str, headers: Any, body: bytes) -> Tuple[str, Response]:
        """Handle one request; returns (counter template, response)."""
        parts = urlsplit(raw_path)
        path = parts.path
        route, params, exists = self.match(method, path)
        if route is None:
            if exists:
                return "<unmatched>", Response(405, error_body("MethodNotAllowed", f"Method {method} not allowed on {path}."))
            return "<unmatched>", Response(404, error_body("NotFound", f"Path {path} not found."))
        req = Request(method, path, parse_qs(parts.query), headers, body, params)
        user_in_flight: Optional[str] = None
        try:
            if not route.control:
                fault = self._inject_before(req, route)
                if fault is not None:
                    return route.template, fault
                user_in_flight = self._enter_in_flight(req)
            if route.auth:
                req.user = self._authenticate(req)
            with self.state.gates.passage("<control>" if route.control else f"{method} {route.template}"):
                resp = route.handler(self, req)
            if not route.control and method == "POST" and resp.status < 400:
                # The work is done (job created/started) but the client never hears about it.
                if self.state.config.p_lost_response > 0 and self.state.random() < self.state.config.p_lost_response:
                    self.state.count_fault("lost_response")
                    resp = Response(502, error_body("BadGateway", "Bad Gateway: upstream connection reset."))
        except ApiError as e:
            resp = Response(e.status, error_body(e.code, e.message), dict(e.headers))
        except Exception as e:  # noqa: BLE001 - a crash must still be a proper openEO error
            resp = Response(500, error_body("Internal", f"Server error: {e!r}"))
        if user_in_flight is not None:
            # Held until the body is written: a streamed asset stays "in flight" while it streams.
            resp.on_sent = lambda: self.state.quotas.leave(user_in_flight)
        return route.template, resp

    def _enter_in_flight(self, req: Request) -> Optional[str]:
        """Count the request against its user's in-flight cap; 429 when the cap is reached."""
        key = self._rate_key(req)
        if key == "<anonymous>":
            return None
        if not self.state.quotas.enter(key):
            self.state.count_fault("in_flight")
            headers = _retry_after_header(self.state.config.retry_after)
            raise ApiError(429, "TooManyRequests",
                           f"Too many requests in progress (at most {self.state.config.max_requests_in_flight}).",
                           headers)
        return key

    def _bearer(self, req: Request) -> Optional[Tuple[str, str, str]]:
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

    def oidc(self) -> Optional[OidcTrust]:
        """The trusted OIDC provider of the current config (None when OIDC is off)."""
        cfg = self.state.config
        with self._oidc_lock:
            if cfg.oidc_issuer is None:
                self._oidc = None
            elif self._oidc is None or self._oidc.issuer != cfg.oidc_issuer.rstrip("/"):
                self._oidc = OidcTrust(cfg.oidc_issuer, cfg.oidc_cache_seconds)
            if self._oidc is not None:
                self._oidc.cache_seconds = cfg.oidc_cache_seconds
            return self._oidc

    def _user_for_bearer(self, bearer: Tuple[str, str, str]) -> str:
        method, provider, token = bearer
        if method == "oidc":
            trust = self.oidc()
            if trust is None or provider != self.state.config.oidc_provider_id:
                raise ApiError(403, "TokenInvalid", TOKEN_INVALID)
            user = trust.user_for(token)
            self.state.record_oidc_user(user, token)
            return user
        return self.state.user_for_token(token)

    def _rate_key(self, req: Request) -> str:
        if req.user is not None:
            return req.user
        auth = req.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except Exception:
                return "<anonymous>"
        bearer = self._bearer(req)
        if bearer and req.auth_error is None:
            try:
                req.user = self._user_for_bearer(bearer)
                return req.user
            except ApiError as exc:
                req.auth_error = exc
        return "<anonymous>"

    def _inject_before(self, req: Request, route: Route) -> Optional[Response]:
        cfg = self.state.config
        if cfg.outage_until is not None and time.time() < cfg.outage_until:
            self.state.count_fault("outage")
            return Response(503, error_body("ServiceUnavailable", "Service temporarily unavailable (maintenance)."))
        wait = self.state.quotas.rate_limited(self._rate_key(req), req.method, route.template)
        if wait is not None:
            self.state.count_fault("rate_limit")
            headers = _retry_after_header(wait) if cfg.retry_after is not None else {}
            return Response(429, error_body("TooManyRequests", "Rate limit exceeded, slow down."), headers)
        if req.method == "POST" and cfg.p_429 > 0 and self.state.random() < cfg.p_429:
            self.state.count_fault("429")
            return Response(429, error_body("TooManyRequests", "Too many requests; please retry later."),
                            _retry_after_header(cfg.retry_after))
        if cfg.p_5xx > 0 and self.state.random() < cfg.p_5xx:
            self.state.count_fault("5xx")
            status = self.state.choice([500, 502, 503])
            code = {500: "Internal", 502: "BadGateway", 503: "ServiceUnavailable"}[status]
            return Response(status, error_body(code, f"Simulated server error ({status})."))
        return None

    def _authenticate(self, req: Request) -> str:
        if req.user is not None:
            return req.user
        if req.auth_error is not None:
            raise req.auth_error
        bearer = self._bearer(req)
        if not bearer:
            raise ApiError(401, "AuthenticationRequired", "Unauthorized: authentication required.")
        return self._user_for_bearer(bearer)

    # ------------------------------------------------------------- discovery
    def well_known(self, req: Request) -> Response:
        return Response(200, catalog.well_known(self.root_url, self.api_url))

    def capabilities(self, req: Request) -> Response:
        cfg = self.state.config
        return Response(200, catalog.capabilities(self.api_url, basic=cfg.basic_auth, oidc=cfg.oidc_issuer is not None))

    def credentials_oidc(self, req: Request) -> Response:
        trust = self.oidc()
        if trust is None:
            raise ApiError(404, "NotFound", "This backend does not support OpenID Connect.")
        cfg = self.state.config
        return Response(200, {"providers": [trust.provider_document(cfg.oidc_provider_id, cfg.oidc_default_client_id)]})

    def credentials_basic(self, req: Request) -> Response:
        if not self.state.config.basic_auth:
            raise ApiError(404, "NotFound", "HTTP Basic authentication is not supported: use OpenID Connect.")
        auth = req.headers.get("Authorization") or ""
        if not auth.startswith("Basic "):
            raise ApiError(401, "AuthenticationRequired", "Unauthorized: HTTP Basic credentials required.")
        try:
            username, password = base64.b64decode(auth[6:]).decode().split(":", 1)
        except Exception:
            raise ApiError(400, "AuthenticationSchemeInvalid", "Malformed HTTP Basic credentials.")
        token = self.state.login(username, password)
        return Response(200, {"access_token": token})

    def me(self, req: Request) -> Response:
        account: Dict[str, Any] = {"user_id": req.user, "name": req.user, "links": []}
        balance = self.state.quotas.balance(req.user)
        if balance is not None:
            account["budget"] = balance
        return Response(200, account)

    def collections(self, req: Request) -> Response:
        return Response(200, catalog.collections(self.api_url))

    def collection(self, req: Request) -> Response:
        cid = req.params["id"]
        if cid not in catalog.COLLECTION_IDS:
            raise ApiError(404, "CollectionNotFound", f"Collection '{cid}' does not exist.")
        return Response(200, catalog.collection(self.api_url, cid))

    def processes(self, req: Request) -> Response:
        return Response(200, catalog.processes())

    def file_formats(self, req: Request) -> Response:
        return Response(200, catalog.file_formats())

    # ------------------------------------------------------------------ jobs
    def create_job(self, req: Request) -> Response:
        body = req.json()
        if self.state.config.create_latency > 0:
            time.sleep(self.state.config.create_latency)
        job = self.state.create_job(req.user, body)
        return Response(201, b"", {"Location": f"{self.api_url}jobs/{job.id}", "OpenEO-Identifier": job.id})

    def list_jobs(self, req: Request) -> Response:
        limit_s = req.arg("limit")
        limit = None
        if limit_s:
            try:
                limit = int(limit_s)
            except ValueError:
                raise ApiError(400, "ParameterInvalid", "limit must be a positive integer.")
            if limit < 1:
                raise ApiError(400, "ParameterInvalid", "limit must be a positive integer.")
        jobs, cursor = self.state.list_jobs(req.user, limit, req.arg("cursor"))
        now = time.monotonic()
        links = []
        if cursor is not None:
            page = len(jobs)
            links.append({"rel": "next", "href": f"{self.api_url}jobs?limit={page}&cursor={cursor}",
                          "type": "application/json"})
        with self.state.lock:
            items = [self.state.job_summary(j, now) for j in jobs]
        return Response(200, {"jobs": items, "links": links})

    def _corrupt(self, job: Any) -> bool:
        marker = self.state.config.corrupt_title
        return bool(marker) and marker in (job.title or "")

    def describe_job(self, req: Request) -> Response:
        with self.state.lock:
            job = self.state.get_job(req.user, req.params["id"])
            if self._corrupt(job):
                self.state.count_fault("corrupt_json")
                return Response(200, b'{"id": "' + job.id.encode() + b'", "status": ', {"Content-Type": "application/json"})
            return Response(200, self.state.job_details(job, time.monotonic()))

    def update_job(self, req: Request) -> Response:
        self.state.update_job(req.user, req.params["id"], req.json())
        return Response(204)

    def delete_job(self, req: Request) -> Response:
        self.state.delete_job(req.user, req.params["id"])
        return Response(204)

    def start_job(self, req: Request) -> Response:
        self.state.get_job(req.user, req.params["id"])  # 404 before the slow part
        if self.state.config.start_latency > 0:
            time.sleep(self.state.config.start_latency)
        self.state.start_job(req.user, req.params["id"])
        return Response(202, b"")

    def cancel_job(self, req: Request) -> Response:
        self.state.cancel_job(req.user, req.params["id"])
        return Response(204)

    def _asset_href(self, job_id: str, name: str) -> str:
        host = self.state.config.asset_host
        if host:
            return f"{host.rstrip('/')}/_assets/{job_id}/{name}?size={self.state.config.asset_size}"
        return f"{self.api_url}jobs/{job_id}/results/assets/{name}"

    def results(self, req: Request) -> Response:
        state = self.state
        with state.lock:
            job = state.get_job(req.user, req.params["id"])
            if job.status != "finished":
                raise ApiError(400, "JobNotFinished", f"Batch job has not finished computing the results yet (status: {job.status}).")
            if self._corrupt(job):
                self.state.count_fault("corrupt_json")
                return Response(200, b"<html>502 Bad Gateway</html>", {"Content-Type": "application/json"})
            size = state.config.asset_size
            names = asset_names(job.output_format, state.config.asset_count)
            updated = job.updated
            created = job.created
        assets = {
            name: {"href": self._asset_href(job.id, name), "type": media, "roles": ["data"], "file:size": size,
                   "title": name}
            for name, media in names
        }
        self_url = f"{self.api_url}jobs/{job.id}/results"
        licence = self.state.config.results_license
        providers = [{"name": "openEO simulator", "roles": ["processor", "host"], "url": self.api_url}]
        return Response(200, {
            "type": "Feature",
            "stac_version": catalog.STAC_VERSION,
            "stac_extensions": ["https://stac-extensions.github.io/file/v2.1.0/schema.json"],
            "id": job.id,
            "geometry": None,
            "properties": {"datetime": iso(updated), "created": iso(created), "updated": iso(updated),
                           "openeo:status": "finished", "providers": providers,
                           **({"license": licence} if licence else {})},
            "assets": assets,
            "links": [
                {"rel": "self", "href": self_url, "type": "application/json"},
                {"rel": "canonical", "href": self_url, "type": "application/json"},
            ],
        })

    def _serve_asset(self, req: Request, job_id: str, name: str, size: int) -> Response:
        total = size
        start, end = 0, total  # [start, end)
        status = 200
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        rng = req.headers.get("Range")
        if rng:
            m = re.match(r"^\s*bytes=(\d*)-(\d*)\s*$", rng)
            if m and (m.group(1) or m.group(2)):
                a, b = m.group(1), m.group(2)
                if a:
                    start = int(a)
                    end = min(total, int(b) + 1) if b else total
                else:  # suffix range: last N bytes
                    start = max(0, total - int(b))
                if start >= total or start >= end:
                    return Response(416, error_body("RangeNotSatisfiable", f"Range {rng} not satisfiable."),
                                    {"Content-Range": f"bytes */{total}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
            # Malformed or multi-range: ignoring Range and sending 200 is allowed by RFC 9110.
        headers["Content-Length"] = str(end - start)
        stream = asset_bytes(job_id, name, start, end)
        rate = self.state.config.asset_bytes_per_second
        return Response(status, None, headers, stream=throttled(stream, rate) if rate else stream)

    def job_asset(self, req: Request) -> Response:
        state = self.state
        state.record_asset_request(req.path, bool(req.headers.get("Authorization")))
        with state.lock:
            job = state.get_job(req.user, req.params["id"])
            if job.status != "finished":
                raise ApiError(400, "JobNotFinished", "Batch job has not finished computing the results yet.")
            names = [n for n, _ in asset_names(job.output_format, state.config.asset_count)]
            size = state.config.asset_size
        if req.params["name"] not in names:
            raise ApiError(404, "AssetNotFound", f"Asset {req.params['name']!r} not found.")
        return self._serve_asset(req, job.id, req.params["name"], size)

    def public_asset(self, req: Request) -> Response:
        # Acts as a foreign asset host (e.g. object storage): no auth, any job id.
        self.state.record_asset_request(req.path, bool(req.headers.get("Authorization")))
        size_s = req.arg("size")
        size = int(size_s) if size_s and size_s.isdigit() else self.state.config.asset_size
        return self._serve_asset(req, req.params["job_id"], req.params["name"], size)

    def logs(self, req: Request) -> Response:
        with self.state.lock:
            job = self.state.get_job(req.user, req.params["id"])
            level = req.arg("level")
            entries = self.state.logs(job, level, req.arg("offset"))
        return Response(200, {"level": (level or "debug").lower(), "logs": entries, "links": []})

    # ---------------------------------------------------------------- control
    def sim_get_config(self, req: Request) -> Response:
        return Response(200, self.state.config.to_dict())

    def sim_patch_config(self, req: Request) -> Response:
        try:
            self.state.configure(**req.json())
        except (ValueError, TypeError) as e:
            raise ApiError(400, "ParameterInvalid", str(e))
        return Response(200, self.state.config.to_dict())

    def sim_counters(self, req: Request) -> Response:
        return Response(200, self.state.counters())

    def sim_reset(self, req: Request) -> Response:
        self.state.reset()
        return Response(204)

    def sim_outage(self, req: Request) -> Response:
        seconds = float(req.json().get("seconds", 0))
        self.state.configure(outage_until=time.time() + seconds)
        return Response(200, {"outage_until": self.state.config.outage_until})
