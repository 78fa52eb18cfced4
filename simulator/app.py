"""The simulator as a Starlette app: the route table, and one endpoint that runs a route's handler behind
the guard (simulator/guard.py) in a worker thread, counts the answer and frees the user's in-flight slot
once the answer is sent.

Handlers block (gates hold them, latency knobs sleep, OIDC checks call the provider), so they run in
worker threads; the event loop only parses, routes and writes, and streams asset bytes.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import List

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from simulator import discovery, job_routes, results
from simulator.guard import Handler, guarded
from simulator.messages import API_PREFIX, Request, Site, error_response

class Endpoint:
    """One route: (method, template) -> handler, with whether it needs a login and is a control route."""

    def __init__(self, site: Site, workers: ThreadPoolExecutor, template: str, handler: Handler, auth: bool,
                 control: bool):
        self.site, self.workers, self.template = site, workers, template
        self.handler, self.auth, self.control = handler, auth, control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = HttpRequest(scope, receive)
        try:
            body = await http.body()
        except ClientDisconnect:  # a client killed mid-request (crash tests): nobody to answer
            return
        req = Request(method=scope["method"], path=scope["path"], template=self.template, query=http.query_params,
                      headers=http.headers, body=body, params=dict(scope["path_params"]))
        # A plain executor: ~130 µs of CPU per hand-off against ~185 µs for anyio's run_in_threadpool.
        response, in_flight = await asyncio.get_running_loop().run_in_executor(
            self.workers, guarded, self.site, req, self.handler, self.auth, self.control)
        state = self.site.state
        state.count_request(f"{req.method} {self.template} {response.status_code}")
        if in_flight is not None and not isinstance(response, StreamingResponse):
            # A whole answer is done once made: leave before sending it. Leaving after the send
            # raced the client, which may send its next request the moment the answer arrives,
            # before this coroutine resumed (a 429 for a client that kept to the cap).
            state.quotas.leave(in_flight)
            in_flight = None
        try:
            await response(scope, receive, send)
        finally:
            if in_flight is not None:
                # A streamed asset stays "in flight" while it streams.
                state.quotas.leave(in_flight)


def routes(site: Site, workers: ThreadPoolExecutor) -> List[Route]:
    table: List[Route] = []

    def add(method: str, template: str, handler: Handler, api: bool = True, auth: bool = True,
            control: bool = False) -> None:
        path = (API_PREFIX + template) if api else template
        table.append(Route(path or "/", Endpoint(site, workers, template or "/", handler, auth, control), methods=[method]))

    add("GET", "/.well-known/openeo", discovery.well_known, api=False, auth=False)
    add("GET", "/", discovery.capabilities, auth=False)
    add("GET", "", discovery.capabilities, auth=False)
    add("GET", "/credentials/basic", discovery.credentials_basic, auth=False)
    add("GET", "/credentials/oidc", discovery.credentials_oidc, auth=False)
    add("GET", "/me", discovery.me)
    add("GET", "/collections", discovery.collections, auth=False)
    add("GET", "/collections/{id}", discovery.collection, auth=False)
    add("GET", "/processes", discovery.processes, auth=False)
    add("GET", "/file_formats", discovery.file_formats, auth=False)
    add("POST", "/jobs", job_routes.create_job)
    add("GET", "/jobs", job_routes.list_jobs)
    add("GET", "/jobs/{id}", job_routes.describe_job)
    add("PATCH", "/jobs/{id}", job_routes.update_job)
    add("DELETE", "/jobs/{id}", job_routes.delete_job)
    add("POST", "/jobs/{id}/results", job_routes.start_job)
    add("DELETE", "/jobs/{id}/results", job_routes.cancel_job)
    add("GET", "/jobs/{id}/results", results.results)
    add("GET", "/jobs/{id}/results/assets/{name}", results.job_asset)
    add("GET", "/jobs/{id}/logs", job_routes.logs)
    add("GET", "/_assets/{job_id}/{name}", results.public_asset, api=False, auth=False)
    add("GET", "/_sim/config", discovery.get_config, api=False, auth=False, control=True)
    add("PATCH", "/_sim/config", discovery.patch_config, api=False, auth=False, control=True)
    add("GET", "/_sim/counters", discovery.counters, api=False, auth=False, control=True)
    add("POST", "/_sim/reset", discovery.reset, api=False, auth=False, control=True)
    add("POST", "/_sim/outage", discovery.outage, api=False, auth=False, control=True)
    add("GET", "/_sim/gates", discovery.gates, api=False, auth=False, control=True)
    add("POST", "/_sim/gates", discovery.gates, api=False, auth=False, control=True)
    return table


def build_app(site: Site, workers: ThreadPoolExecutor) -> Starlette:
    """The app; handlers run in `workers`, which needs a thread for every request that may be held at once
    (gates, latency knobs), as a real backend's server has."""
    async def unmatched(request: HttpRequest, exc: HTTPException) -> Response:
        method, path = request.method, request.url.path
        site.state.count_request(f"{method} <unmatched> {exc.status_code}")
        if exc.status_code == 405:
            return error_response(405, "MethodNotAllowed", f"Method {method} not allowed on {path}.")
        return error_response(404, "NotFound", f"Path {path} not found.")

    app = Starlette(routes=routes(site, workers), exception_handlers={404: unmatched, 405: unmatched})
    app.router.redirect_slashes = False  # an unknown path is a 404, as before, not a redirect
    return app
