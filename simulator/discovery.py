"""Handlers of the routes around the jobs: discovery, login, the account, metadata, and the /_sim/* control
routes tests and shells steer the simulator with."""
from __future__ import annotations

import time
from typing import Any, Dict

from starlette.responses import JSONResponse, Response

from simulator import catalog
from simulator.accounts import basic_credentials
from simulator.messages import ApiError, Request, Site


def well_known(site: Site, req: Request) -> Response:
    return JSONResponse(catalog.well_known(site.root_url, site.api_url))


def capabilities(site: Site, req: Request) -> Response:
    cfg = site.state.config
    return JSONResponse(catalog.capabilities(site.api_url, basic=cfg.basic_auth, oidc=cfg.oidc_issuer is not None))


def credentials_oidc(site: Site, req: Request) -> Response:
    trust = site.state.accounts.oidc()
    if trust is None:
        raise ApiError(404, "NotFound", "This backend does not support OpenID Connect.")
    cfg = site.state.config
    return JSONResponse({"providers": [trust.provider_document(cfg.oidc_provider_id, cfg.oidc_default_client_id)]})


def credentials_basic(site: Site, req: Request) -> Response:
    if not site.state.config.basic_auth:
        raise ApiError(404, "NotFound", "HTTP Basic authentication is not supported: use OpenID Connect.")
    credentials = basic_credentials(req)
    if credentials is None:
        raise ApiError(401, "AuthenticationRequired", "Unauthorized: HTTP Basic credentials required.")
    return JSONResponse({"access_token": site.state.accounts.login(*credentials)})


def me(site: Site, req: Request) -> Response:
    account: Dict[str, Any] = {"user_id": req.user, "name": req.user, "links": []}
    balance = site.state.quotas.balance(req.user)
    if balance is not None:
        account["budget"] = balance
    return JSONResponse(account)


def collections(site: Site, req: Request) -> Response:
    return JSONResponse(catalog.collections(site.api_url))


def collection(site: Site, req: Request) -> Response:
    cid = req.params["id"]
    if cid not in catalog.COLLECTION_IDS:
        raise ApiError(404, "CollectionNotFound", f"Collection '{cid}' does not exist.")
    return JSONResponse(catalog.collection(site.api_url, cid))


def processes(site: Site, req: Request) -> Response:
    return JSONResponse(catalog.processes())


def file_formats(site: Site, req: Request) -> Response:
    return JSONResponse(catalog.file_formats())


# ------------------------------------------------------------------- /_sim/* (never faulted, no login)
def get_config(site: Site, req: Request) -> Response:
    return JSONResponse(site.state.config.to_dict())


def patch_config(site: Site, req: Request) -> Response:
    try:
        site.state.configure(**req.json())
    except (ValueError, TypeError) as e:
        raise ApiError(400, "ParameterInvalid", str(e))
    return JSONResponse(site.state.config.to_dict())


def counters(site: Site, req: Request) -> Response:
    return JSONResponse(site.state.counters())


def reset(site: Site, req: Request) -> Response:
    site.state.reset()
    return Response(status_code=204)


def outage(site: Site, req: Request) -> Response:
    seconds = float(req.json().get("seconds", 0))
    site.state.configure(outage_until=time.time() + seconds)
    return JSONResponse({"outage_until": site.state.config.outage_until})


def gates(site: Site, req: Request) -> Response:
    """`{"close": [routes]}` / `{"open": [routes]}` (an empty list: all) on POST; the held requests
    per route either way. E.g. close "POST /jobs": creates are held (the client may time out) and
    each creates its job when the gate opens, as a backend that answered too late."""
    gates = site.state.gates
    if req.method == "POST":
        body = req.json() or {}
        if "close" in body:
            gates.close(*body["close"])
        if "open" in body:
            gates.open(*body["open"])
    return JSONResponse({"held": gates.held()})
