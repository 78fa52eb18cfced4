"""Tasks for jobs that ended: download a finished job's assets, keep a failed job's error logs."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retry_policy import DOWNLOAD_RETRY_DELAYS
from tasks.results.items import JOB_METADATA_ASSET, build_item, item_file, job_folder, summary
from tasks.results.storage import ResultsRoot
from tasks.connections import ManagedConnection
from tasks.faults import UnexpectedResponse
from tasks.openeo_calls import describe_job, fetch_error_logs
from tasks.outcome import Outcome, Step, deliver
from tasks.standalone import ConnectionSource, connection_for

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20


class UnsafeAssetName(UnexpectedResponse):
    """An asset name that would write outside the job's directory."""


class IncompleteDownload(UnexpectedResponse):
    """Fewer or more bytes arrived than the backend announced."""


def job_dir(root_dir: str | os.PathLike, job_id: str) -> str | Path:
    """Where openeo's manager puts a job's files too: `root_dir/job_<id>/` (a URL on object storage)."""
    root = ResultsRoot(root_dir)
    return root.local_path(job_folder(job_id)) or root.url_of(job_folder(job_id))


def safe_asset_name(name: str) -> str:
    """`name` as a relative POSIX path, refusing names that are absolute or climb out of a folder."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or ".." in pure.parts or any(":" in part for part in pure.parts):
        raise UnsafeAssetName(f"refusing asset name {name!r}: it would be written outside the job's folder")
    return "/".join(pure.parts)


def safe_asset_path(directory: Path, name: str) -> Path:
    """`directory/name`, refusing names that are absolute or climb out of `directory` (symlinks too)."""
    target = (directory / Path(*PurePosixPath(safe_asset_name(name)).parts)).resolve()
    if directory.resolve() not in target.parents:
        raise UnsafeAssetName(f"refusing asset name {name!r}: it would be written outside {directory}")
    return target


def _download_asset(connection: ManagedConnection, href: str, root: ResultsRoot, relative: str,
                    expected_size: Any) -> int:
    """Stream one asset into `relative` under `root`; it appears there only complete (storage.py)."""
    headers = connection.bearer_header_for(href)  # never sends the token to a foreign origin
    connection.count("GET", "asset")
    name = relative.rsplit("/", 1)[-1]
    with connection.session.get(href, headers=headers, stream=True, timeout=300) as response:
        response.raise_for_status()
        announced = response.headers.get("Content-Length")

        def verify(written: int) -> None:
            for what, size in (("Content-Length", announced), ("file:size", expected_size)):
                if size is not None and int(size) != written:
                    raise IncompleteDownload(f"{name}: got {written} bytes, {what} says {size}")

        return root.write_stream(relative, response.iter_content(CHUNK_SIZE), verify)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: anything but an answer that will not improve (invalid JSON, unsafe names)."""
    return not isinstance(exc, UnexpectedResponse) or isinstance(exc, IncompleteDownload)


# Waits between attempts of one job (the task has no Prefect retries of its own: retrying a
# batch whole would repeat the jobs that went well).
RETRY_DELAYS = DOWNLOAD_RETRY_DELAYS


def each_job(jobs: List[Dict[str, Any]], what: str, work: Callable[[Dict[str, Any]], Dict[str, Any]],
             delays: Sequence[float]) -> Dict[int, Dict[str, Any]]:
    """{row: work(job)} for each job, each retried on its own; a job that still fails: {"error"}."""
    return {int(job["_row"]): _with_retries(f"{what} of job {job['job_id']}", lambda job=job: work(job), delays)
            for job in jobs}


def _with_retries(what: str, call: Callable[[], Dict[str, Any]], delays: Sequence[float]) -> Dict[str, Any]:
    for delay in (*delays, None):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - one job's failure must not sink the batch
            if delay is None or not is_transient(exc):
                return {"error": f"{type(exc).__name__}: {exc}"}
            log.info("%s failed (%s); retrying in %.0f s", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@task(name="download-results", task_run_name="download-{label}", retries=0, cache_policy=NO_CACHE)
def download_results(
    backend: str,
    connection_key: ConnectionSource,
    jobs: List[Dict[str, Any]],
    root_dir: str,
    label: str,
    inbox: Optional[str] = None,
    retry_delays: Sequence[float] = RETRY_DELAYS,
    collection_id: str = "results",
) -> Outcome:
    """Download every asset of each finished job (`jobs`: [{"_row", "job_id", "metadata"?, "footprint"?}])
    into `root_dir/job_<id>/` (a folder or an fsspec URL), save its metadata and its STAC item, one job
    after the other, each retried on its own.

    Assets already complete (right size) are not fetched again, so a retried or resumed download
    only fetches what is missing. Outcome rows: {row: {"assets", "bytes", "item"} or {"error"}}.
    """
    connection = connection_for(connection_key, backend)
    results = each_job(jobs, "download", lambda job: fetch_job_results(
        connection, job["job_id"], root_dir, job.get("metadata"), job.get("footprint"), collection_id), retry_delays)
    return deliver(inbox, Outcome(Step.DOWNLOAD, backend, results))


def fetch_job_results(
    connection: ManagedConnection, job_id: str, root_dir: str, metadata: Optional[Dict[str, Any]] = None,
    footprint: Optional[Dict[str, Any]] = None, collection_id: str = "results",
) -> Dict[str, Any]:
    """The work of one download: results document, each asset, the metadata JSON, then the STAC item
    (last: an item exists only once every asset it lists is complete). `footprint`: what the flow
    knows of the row for the item (tasks/results/items.py)."""
    if metadata is None:
        metadata = describe_job(connection, job_id)
    root = ResultsRoot(root_dir)
    folder = job_folder(job_id)
    response = connection.get(f"/jobs/{job_id}/results", expected_status=200)
    try:
        document = response.json()
        assets = document.get("assets")
    except (ValueError, AttributeError) as exc:
        raise UnexpectedResponse(f"results document of job {job_id} is not valid JSON: {exc}") from None
    if not isinstance(assets, dict):
        raise UnexpectedResponse(f"results of job {job_id} list no assets")
    names = {name: safe_asset_name(name) for name in assets}  # every name checked before any byte is fetched
    if root.local:
        for name in names:
            safe_asset_path(Path(root.path(folder)), name)
    root.abort_unfinished_uploads(folder)  # what a killed run left (S3)
    stored: Dict[str, Dict[str, Any]] = {}
    for name, asset in assets.items():
        href = asset.get("href") if isinstance(asset, dict) else None
        if not href:
            raise UnexpectedResponse(f"asset {name!r} of job {job_id} has no href")
        relative = f"{folder}/{names[name]}"
        expected = asset.get("file:size")
        size = root.size(relative)
        if expected is None or size != int(expected):
            size = _download_asset(connection, href, root, relative, expected)
        stored[name] = {**{k: v for k, v in asset.items() if k in ("type", "roles", "title") or k.startswith("proj:")},
                        "size": size}
    metadata_file = f"{folder}/job_{job_id}.json"
    metadata_bytes = json.dumps(metadata, indent=2).encode()
    root.write_bytes(metadata_file, metadata_bytes)
    stored[JOB_METADATA_ASSET] = {"size": len(metadata_bytes), "type": "application/json", "roles": ["metadata"],
                                  "title": "openEO batch job metadata"}
    files = {**names, JOB_METADATA_ASSET: metadata_file.rsplit("/", 1)[-1]}
    hrefs = {key: f"./{path}" if root.local else root.url_of(f"{folder}/{path}") for key, path in files.items()}
    item = build_item(job_id, collection_id, footprint or {}, document, stored, hrefs)
    root.write_json(item_file(job_id), item)
    total = sum(a["size"] for k, a in stored.items() if k != JOB_METADATA_ASSET)
    return {"job_id": job_id, "assets": len(assets), "bytes": total, "item": summary(item, item_file(job_id))}


@task(name="save-error-logs", task_run_name="error-logs-{label}", retries=0, cache_policy=NO_CACHE)
def save_error_logs(
    backend: str,
    connection_key: ConnectionSource,
    jobs: List[Dict[str, Any]],
    root_dir: str,
    label: str,
    inbox: Optional[str] = None,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> Outcome:
    """Save each failed job's error logs as `job_<id>_errors.json` (`jobs`: [{"_row", "job_id"}]).
    Outcome rows: {row: {"error_message": its first error line, "log_entries": n} or {"error"}}."""
    connection = connection_for(connection_key, backend)
    results = each_job(jobs, "error logs", lambda job: _save_logs(connection, job["job_id"], root_dir), retry_delays)
    return deliver(inbox, Outcome(Step.ERROR_LOGS, backend, results))


def _save_logs(connection: ManagedConnection, job_id: str, root_dir: str) -> Dict[str, Any]:
    logs = fetch_error_logs(connection, job_id)
    ResultsRoot(root_dir).write_json(f"{job_folder(job_id)}/job_{job_id}_errors.json", logs)
    messages = [entry.get("message") for entry in logs if isinstance(entry, dict) and entry.get("message")]
    return {"error_message": messages[0] if messages else None, "log_entries": len(logs)}
