"""Handlers of /jobs and /jobs/{id}[/logs]: batch jobs as openEO documents (summary, details, logs)."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

from starlette.responses import JSONResponse, Response

from simulator.jobs import TERMINAL, Job, iso
from simulator.messages import ApiError, Request, Site

LOG_LEVELS = {"debug": 0, "info": 1, "warning": 2, "error": 3}


def corrupt(site: Site, job: Job) -> bool:
    """Whether the `corrupt_title` knob makes this job's documents invalid JSON."""
    marker = site.state.config.corrupt_title
    return bool(marker) and marker in (job.title or "")


def create_job(site: Site, req: Request) -> Response:
    body = req.json()
    if site.state.config.create_latency > 0:
        time.sleep(site.state.config.create_latency)
    job = site.state.book.create(req.user, body)
    return Response(b"", 201, {"Location": f"{site.api_url}jobs/{job.id}", "OpenEO-Identifier": job.id})


def list_jobs(site: Site, req: Request) -> Response:
    limit_s = req.arg("limit")
    limit = None
    if limit_s:
        try:
            limit = int(limit_s)
        except ValueError:
            raise ApiError(400, "ParameterInvalid", "limit must be a positive integer.")
        if limit < 1:
            raise ApiError(400, "ParameterInvalid", "limit must be a positive integer.")
    state = site.state
    jobs, cursor = state.book.list(req.user, limit, req.arg("cursor"))
    now = time.monotonic()
    links = []
    if cursor is not None:
        links.append({"rel": "next", "href": f"{site.api_url}jobs?limit={len(jobs)}&cursor={cursor}",
                      "type": "application/json"})
    with state.lock:
        items = [job_summary(j, now) for j in jobs]
    return JSONResponse({"jobs": items, "links": links})


def describe_job(site: Site, req: Request) -> Response:
    state = site.state
    with state.lock:
        job = state.book.get(req.user, req.params["id"])
        if corrupt(site, job):
            state.count_fault("corrupt_json")
            return Response(b'{"id": "' + job.id.encode() + b'", "status": ', 200, media_type="application/json")
        return JSONResponse(job_details(job, time.monotonic()))


def update_job(site: Site, req: Request) -> Response:
    site.state.book.update(req.user, req.params["id"], req.json())
    return Response(status_code=204)


def delete_job(site: Site, req: Request) -> Response:
    site.state.book.delete(req.user, req.params["id"])
    return Response(status_code=204)


def start_job(site: Site, req: Request) -> Response:
    book = site.state.book
    book.get(req.user, req.params["id"])  # 404 before the slow part
    if site.state.config.start_latency > 0:
        time.sleep(site.state.config.start_latency)
    book.start(req.user, req.params["id"])
    return Response(b"", 202)


def cancel_job(site: Site, req: Request) -> Response:
    site.state.book.cancel(req.user, req.params["id"])
    return Response(status_code=204)


def logs(site: Site, req: Request) -> Response:
    with site.state.lock:
        job = site.state.book.get(req.user, req.params["id"])
        level = req.arg("level")
        entries = log_entries(job, level, req.arg("offset"))
    return JSONResponse({"level": (level or "debug").lower(), "logs": entries, "links": []})


# --------------------------------------------------------------------------- documents
def progress(job: Job, now: float) -> float:
    if job.status == "finished":
        return 100.0
    if job.status == "running" and job.started_at is not None and job.finish_at:
        total = max(job.finish_at - job.started_at, 1e-9)
        return round(min(99.0, 100.0 * (now - job.started_at) / total), 1)
    if job.status in ("error", "canceled") and job.started_at is not None and job.ended_at is not None:
        total = max((job.finish_at or job.ended_at) - job.started_at, 1e-9)
        return round(min(99.0, 100.0 * (job.ended_at - job.started_at) / total), 1)
    return 0.0


def usage(job: Job) -> Tuple[Dict[str, Any], float]:
    """Usage and costs derived from the simulated run duration (deterministic)."""
    duration = 0.0
    if job.started_at is not None and job.ended_at is not None:
        duration = max(0.0, job.ended_at - job.started_at)
    used = {
        "cpu": {"value": round(duration * 4, 3), "unit": "cpu-seconds"},
        "memory": {"value": round(duration * 4 * 2048, 3), "unit": "mb-seconds"},
        "duration": {"value": round(duration, 3), "unit": "seconds"},
    }
    return used, round(0.5 + duration * 0.02, 4)


def job_summary(job: Job, now: float) -> Dict[str, Any]:
    d: Dict[str, Any] = {"id": job.id, "title": job.title, "description": job.description, "status": job.status,
                         "created": iso(job.created), "updated": iso(job.updated), "progress": progress(job, now)}
    if job.plan is not None:
        d["plan"] = job.plan
    if job.budget is not None:
        d["budget"] = job.budget
    if job.status in TERMINAL and job.started_at is not None:
        d["usage"], d["costs"] = usage(job)
    return d


def job_details(job: Job, now: float) -> Dict[str, Any]:
    d = job_summary(job, now)
    d["process"] = job.process
    for k, v in job.extra.items():
        d.setdefault(k, v)
    return d


def log_entries(job: Job, level: Optional[str], offset: Optional[str]) -> List[Dict[str, Any]]:
    min_level = LOG_LEVELS.get((level or "debug").lower())
    if min_level is None:
        raise ApiError(400, "InvalidLogLevel", f"Invalid log level {level!r}; use one of {list(LOG_LEVELS)}.")
    entries = job.logs
    if offset:
        ids = [e["id"] for e in entries]
        if offset in ids:
            entries = entries[ids.index(offset) + 1:]
    return [e for e in entries if LOG_LEVELS[e["level"]] >= min_level]
