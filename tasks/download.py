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

from tasks.connections import ManagedConnection, get_connection
from tasks.faults import UnexpectedResponse
from tasks.openeo_calls import describe_job, fetch_error_logs
from tasks.outcome import Outcome, Step, deliver

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20


class UnsafeAssetName(UnexpectedResponse):
    """An asset name that would write outside the job's directory."""


class IncompleteDownload(UnexpectedResponse):
    """Fewer or more bytes arrived than the backend announced."""


def job_dir(root_dir: str | os.PathLike, job_id: str) -> Path:
    """Where openeo's manager puts a job's files too: `root_dir/job_<id>/`."""
    return Path(root_dir) / f"job_{job_id}"


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def safe_asset_path(directory: Path, name: str) -> Path:
    """`directory/name`, refusing names that are absolute or climb out of `directory`."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or ".." in pure.parts or any(":" in part for part in pure.parts):
        raise UnsafeAssetName(f"refusing asset name {name!r}: it would be written outside {directory}")
    target = (directory / Path(*pure.parts)).resolve()
    if directory.resolve() not in target.parents:
        raise UnsafeAssetName(f"refusing asset name {name!r}: it would be written outside {directory}")
    return target


def _download_asset(connection: ManagedConnection, href: str, target: Path, expected_size: Any) -> int:
    """Stream one asset to `<name>.part`, check its size, then rename it into place."""
    headers = connection.bearer_header_for(href)  # never sends the token to a foreign origin
    connection.count("GET", "asset")
    tmp = target.with_name(f".{target.name}.part")
    target.parent.mkdir(parents=True, exist_ok=True)
    with connection.session.get(href, headers=headers, stream=True, timeout=300) as response:
        response.raise_for_status()
        announced = response.headers.get("Content-Length")
        written = 0
        with open(tmp, "wb") as f:
            for chunk in response.iter_content(CHUNK_SIZE):
                f.write(chunk)
                written += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    for what, size in (("Content-Length", announced), ("file:size", expected_size)):
        if size is not None and int(size) != written:
            tmp.unlink(missing_ok=True)
            raise IncompleteDownload(f"{target.name}: got {written} bytes, {what} says {size}")
    os.replace(tmp, target)
    return written


def is_transient(exc: BaseException) -> bool:
    """Worth another try: anything but an answer that will not improve (invalid JSON, unsafe names)."""
    return not isinstance(exc, UnexpectedResponse) or isinstance(exc, IncompleteDownload)


# Waits between attempts of one job (the task has no Prefect retries of its own: retrying a
# batch whole would repeat the jobs that went well).
RETRY_DELAYS = (2.0, 10.0)


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
    connection_key: str,
    jobs: List[Dict[str, Any]],
    root_dir: str,
    label: str,
    inbox: Optional[str] = None,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> Outcome:
    """Download every asset of each finished job (`jobs`: [{"_row", "job_id", "metadata"?}]) into
    `root_dir/job_<id>/` and save its metadata, one job after the other, each retried on its own.

    Assets already complete on disk (right size) are not fetched again, so a retried or resumed
    download only fetches what is missing. Outcome rows: {row: {"assets", "bytes"} or {"error"}}.
    """
    connection = get_connection(connection_key)
    results = each_job(jobs, "download", lambda job: fetch_job_results(
        connection, job["job_id"], root_dir, job.get("metadata")), retry_delays)
    return deliver(inbox, Outcome(Step.DOWNLOAD, backend, results))


def fetch_job_results(
    connection: ManagedConnection, job_id: str, root_dir: str, metadata: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """The work of one download: results document, each asset, then the metadata JSON."""
    if metadata is None:
        metadata = describe_job(connection, job_id)
    directory = job_dir(root_dir, job_id)
    directory.mkdir(parents=True, exist_ok=True)
    response = connection.get(f"/jobs/{job_id}/results", expected_status=200)
    try:
        assets = response.json().get("assets")
    except (ValueError, AttributeError) as exc:
        raise UnexpectedResponse(f"results document of job {job_id} is not valid JSON: {exc}") from None
    if not isinstance(assets, dict):
        raise UnexpectedResponse(f"results of job {job_id} list no assets")
    total = 0
    for name, asset in assets.items():
        target = safe_asset_path(directory, name)
        href = asset.get("href") if isinstance(asset, dict) else None
        if not href:
            raise UnexpectedResponse(f"asset {name!r} of job {job_id} has no href")
        expected = asset.get("file:size")
        if expected is not None and target.exists() and target.stat().st_size == int(expected):
            total += target.stat().st_size
            continue
        total += _download_asset(connection, href, target, expected)
    write_atomically(directory / f"job_{job_id}.json", json.dumps(metadata, indent=2).encode())
    return {"job_id": job_id, "assets": len(assets), "bytes": total}


@task(name="save-error-logs", task_run_name="error-logs-{label}", retries=0, cache_policy=NO_CACHE)
def save_error_logs(
    backend: str,
    connection_key: str,
    jobs: List[Dict[str, Any]],
    root_dir: str,
    label: str,
    inbox: Optional[str] = None,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> Outcome:
    """Save each failed job's error logs as `job_<id>_errors.json` (`jobs`: [{"_row", "job_id"}]).
    Outcome rows: {row: {"error_message": its first error line, "log_entries": n} or {"error"}}."""
    connection = get_connection(connection_key)
    results = each_job(jobs, "error logs", lambda job: _save_logs(connection, job["job_id"], root_dir), retry_delays)
    return deliver(inbox, Outcome(Step.ERROR_LOGS, backend, results))


def _save_logs(connection: ManagedConnection, job_id: str, root_dir: str) -> Dict[str, Any]:
    logs = fetch_error_logs(connection, job_id)
    directory = job_dir(root_dir, job_id)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / f"job_{job_id}_errors.json", json.dumps(logs, indent=2).encode())
    messages = [entry.get("message") for entry in logs if isinstance(entry, dict) and entry.get("message")]
    return {"error_message": messages[0] if messages else None, "log_entries": len(logs)}
