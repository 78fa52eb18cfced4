"""What stands between a request and its handler: injected faults (outage, 429, 5xx, lost responses),
the per-user quotas (rate limit, requests in flight), the login check and the route's gate."""
from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

from starlette.responses import Response

from simulator.accounts import ANONYMOUS
from simulator.messages import ApiError, Request, Site, error_response, retry_after_header

Handler = Callable[[Site, Request], Response]


def guarded(site: Site, req: Request, handler: Handler, auth: bool, control: bool) -> Tuple[Response, Optional[str]]:
    """Handle one request (blocking: run it in a worker thread). Returns the response and the user
    whose request-in-flight slot it holds until the response is sent (None: none held)."""
    state = site.state
    in_flight: Optional[str] = None
    try:
        if not control:
            fault = injected_fault(site, req)
            if fault is not None:
                return fault, None
            in_flight = enter_in_flight(site, req)
        if auth:
            req.user = state.accounts.authenticate(req)
        with state.gates.passage("<control>" if control else req.route):
            resp = handler(site, req)
        if not control and req.method == "POST" and resp.status_code < 400:
            # The work is done (job created/started) but the client never hears about it.
            if state.config.p_lost_response > 0 and state.random() < state.config.p_lost_response:
                state.count_fault("lost_response")
                resp = error_response(502, "BadGateway", "Bad Gateway: upstream connection reset.")
    except ApiError as e:
        resp = error_response(e.status, e.code, e.message, e.headers)
    except Exception as e:  # noqa: BLE001 - a crash must still be a proper openEO error
        resp = error_response(500, "Internal", f"Server error: {e!r}")
    return resp, in_flight


def enter_in_flight(site: Site, req: Request) -> Optional[str]:
    """Count the request against its user's in-flight cap; 429 when the cap is reached."""
    state = site.state
    key = state.accounts.quota_key(req)
    if key == ANONYMOUS:
        return None
    if not state.quotas.enter(key):
        state.count_fault("in_flight")
        raise ApiError(429, "TooManyRequests",
                       f"Too many requests in progress (at most {state.config.max_requests_in_flight}).",
                       retry_after_header(state.config.retry_after))
    return key


def injected_fault(site: Site, req: Request) -> Optional[Response]:
    """The fault answered instead of handling the request, if any: outage, rate limit, random 429 or 5xx."""
    state = site.state
    cfg = state.config
    if cfg.outage_until is not None and time.time() < cfg.outage_until:
        state.count_fault("outage")
        return error_response(503, "ServiceUnavailable", "Service temporarily unavailable (maintenance).")
    wait = state.quotas.rate_limited(state.accounts.quota_key(req), req.method, req.template)
    if wait is not None:
        state.count_fault("rate_limit")
        headers = retry_after_header(wait) if cfg.retry_after is not None else {}
        return error_response(429, "TooManyRequests", "Rate limit exceeded, slow down.", headers)
    if req.method == "POST" and cfg.p_429 > 0 and state.random() < cfg.p_429:
        state.count_fault("429")
        return error_response(429, "TooManyRequests", "Too many requests; please retry later.",
                              retry_after_header(cfg.retry_after))
    if cfg.p_5xx > 0 and state.random() < cfg.p_5xx:
        state.count_fault("5xx")
        status = state.choice([500, 502, 503])
        code = {500: "Internal", 502: "BadGateway", 503: "ServiceUnavailable"}[status]
        return error_response(status, code, f"Simulated server error ({status}).")
    return None
