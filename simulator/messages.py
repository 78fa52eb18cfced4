"""A request as the simulator's handlers see it, and openEO error answers."""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from starlette.responses import JSONResponse


API_PREFIX = "/openeo/1.2"


class ApiError(Exception):
    """An openEO error response (raised anywhere in handling, rendered by the app)."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> Dict[str, Any]:
    return {"id": uuid.uuid4().hex, "code": code, "message": message, "links": []}


def error_response(status: int, code: str, message: str, headers: Optional[Mapping[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status, dict(headers or {}))


def retry_after_header(seconds: Optional[float]) -> Dict[str, str]:
    # HTTP delta-seconds must be an integer (urllib3 rejects fractions).
    return {} if seconds is None else {"Retry-After": str(max(0, math.ceil(seconds)))}


@dataclass
class Request:
    method: str  # HEAD stays HEAD (routes match it as GET)
    path: str
    template: str  # the route, e.g. "/jobs/{id}": counter and gate keys
    query: Mapping[str, str]
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    params: Dict[str, str]
    user: Optional[str] = None
    auth_error: Optional[ApiError] = None  # a bearer already found invalid (checked once per request)

    @property
    def route(self) -> str:
        """'METHOD /template', as gates and quota knobs name routes."""
        return f"{self.method} {self.template}"

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
        return self.query.get(name) or None


@dataclass
class Site:
    """What handlers get besides the request: the backend's state and where this server answers."""
    state: Any  # the simulator's SimState (simulator/state.py imports this module, not the other way)
    root_url: str  # http://host:port

    @property
    def api_url(self) -> str:
        return self.root_url + API_PREFIX + "/"
