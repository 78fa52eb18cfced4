"""Results of finished jobs: the STAC item of /jobs/{id}/results and the asset bytes (Range requests,
an optional slow link, a "foreign" unauthenticated asset host at /_assets/...)."""
from __future__ import annotations

import asyncio
import re
import time
import zlib
from typing import AsyncIterator, Iterator, List, Optional, Tuple

from starlette.responses import JSONResponse, Response, StreamingResponse

from simulator import catalog
from simulator.job_routes import corrupt
from simulator.jobs import iso
from simulator.messages import ApiError, Request, Site, error_response


def asset_names(fmt: str, count: int) -> List[Tuple[str, str]]:
    """(name, media type) of each asset for an output format."""
    if fmt.lower() in ("netcdf", "nc"):
        ext, media = "nc", "application/x-netcdf"
    else:
        ext, media = "tif", "image/tiff; application=geotiff"
    if count == 1:
        return [(f"openEO.{ext}", media)]
    return [(f"openEO_{i}.{ext}", media) for i in range(count)]


def asset_bytes(job_id: str, name: str, start: int, end: int, chunk: int = 65536) -> Iterator[bytes]:
    """Deterministic content for bytes [start, end) of an asset, streamed in chunks.

    byte[i] = (i * 31 + h) mod 256 is periodic in 256, so any range is cheap to produce.
    """
    h = zlib.crc32(f"{job_id}/{name}".encode())
    period = bytes(((k * 31 + h) % 256) for k in range(256))
    big = period * (chunk // 256 + 2)
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        off = pos % 256
        yield big[off: off + n]
        pos += n


async def paced(chunks: Iterator[bytes], bytes_per_second: Optional[float], step: int = 16384) -> AsyncIterator[bytes]:
    """`chunks` in the event loop (they are cheap to make); with a rate, re-cut into `step`-byte pieces
    sent no faster than `bytes_per_second` (a slow link)."""
    started, sent = time.monotonic(), 0
    for chunk in chunks:
        if not bytes_per_second:
            yield chunk
            continue
        for first in range(0, len(chunk), step):
            piece = chunk[first:first + step]
            ahead = (sent + len(piece)) / bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            sent += len(piece)
            yield piece


def _asset_href(site: Site, job_id: str, name: str) -> str:
    host = site.state.config.asset_host
    if host:
        return f"{host.rstrip('/')}/_assets/{job_id}/{name}?size={site.state.config.asset_size}"
    return f"{site.api_url}jobs/{job_id}/results/assets/{name}"


def results(site: Site, req: Request) -> Response:
    state = site.state
    with state.lock:
        job = state.book.get(req.user, req.params["id"])
        if job.status != "finished":
            raise ApiError(400, "JobNotFinished",
                           f"Batch job has not finished computing the results yet (status: {job.status}).")
        if corrupt(site, job):
            state.count_fault("corrupt_json")
            return Response(b"<html>502 Bad Gateway</html>", 200, media_type="application/json")
        size = state.config.asset_size
        names = asset_names(job.output_format, state.config.asset_count)
        updated, created = job.updated, job.created
    assets = {name: {"href": _asset_href(site, job.id, name), "type": media, "roles": ["data"], "file:size": size,
                     "title": name}
              for name, media in names}
    self_url = f"{site.api_url}jobs/{job.id}/results"
    licence = state.config.results_license
    providers = [{"name": "openEO simulator", "roles": ["processor", "host"], "url": site.api_url}]
    return JSONResponse({
        "type": "Feature",
        "stac_version": catalog.STAC_VERSION,
        "stac_extensions": ["https://stac-extensions.github.io/file/v2.1.0/schema.json"],
        "id": job.id,
        "geometry": None,
        "properties": {"datetime": iso(updated), "created": iso(created), "updated": iso(updated),
                       "openeo:status": "finished", "providers": providers, **({"license": licence} if licence else {})},
        "assets": assets,
        "links": [{"rel": "self", "href": self_url, "type": "application/json"},
                  {"rel": "canonical", "href": self_url, "type": "application/json"}],
    })


def serve_asset(site: Site, req: Request, job_id: str, name: str, size: int) -> Response:
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
                return error_response(416, "RangeNotSatisfiable", f"Range {rng} not satisfiable.",
                                      {"Content-Range": f"bytes */{total}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
        # Malformed or multi-range: ignoring Range and sending 200 is allowed by RFC 9110.
    headers["Content-Length"] = str(end - start)
    if req.method == "HEAD":
        return Response(b"", status, headers)
    stream = asset_bytes(job_id, name, start, end)
    return StreamingResponse(paced(stream, site.state.config.asset_bytes_per_second), status, headers)


def job_asset(site: Site, req: Request) -> Response:
    state = site.state
    state.record_asset_request(req.path, bool(req.headers.get("Authorization")))
    with state.lock:
        job = state.book.get(req.user, req.params["id"])
        if job.status != "finished":
            raise ApiError(400, "JobNotFinished", "Batch job has not finished computing the results yet.")
        names = [n for n, _ in asset_names(job.output_format, state.config.asset_count)]
        size = state.config.asset_size
    if req.params["name"] not in names:
        raise ApiError(404, "AssetNotFound", f"Asset {req.params['name']!r} not found.")
    return serve_asset(site, req, job.id, req.params["name"], size)


def public_asset(site: Site, req: Request) -> Response:
    # Acts as a foreign asset host (e.g. object storage): no auth, any job id.
    site.state.record_asset_request(req.path, bool(req.headers.get("Authorization")))
    size_s = req.arg("size")
    size = int(size_s) if size_s and size_s.isdigit() else site.state.config.asset_size
    return serve_asset(site, req, req.params["job_id"], req.params["name"], size)
