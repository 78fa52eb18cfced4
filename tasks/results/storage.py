"""The results root of a campaign: a local folder or any fsspec URL, written atomically.

Every write either lands whole under its final name or not at all, so a result cut off by a
kill never looks finished:

- local folders (a plain path or `file://`): a `.<name>.part` file beside the target, fsynced,
  then `os.replace` (atomic on one file system; jobdb/atomic.py);
- object storage (`s3://`, `gs://`, ...): small files (JSON) in one PUT, which a store applies
  whole or not at all; streamed assets through fsspec's non-autocommitting file: on S3 a
  multipart upload of the *final* key, parts sent as they fill (memory stays at one part), and
  completed only after every byte arrived and the count matched what the backend announced;
  otherwise the upload is aborted. Then the stored object's size is checked once more (HEAD).
  Why not a temporary key then copy + delete: the copy is a second server-side pass over every
  byte (minutes for large rasters, multipart above 5 GB) and adds a window where a kill leaves a
  stray temporary object; an unfinished multipart upload is never visible as an object at all.
  What a kill leaves (the parts of an unfinished upload, billed until aborted) is aborted the
  next time that job is downloaded (`abort_unfinished_uploads`).

Credentials: fsspec/s3fs read the standard AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...) by themselves; options from a prefect-aws block are registered here
per root URL, in this process's memory only (`register_storage_options`), so tasks get the
plain URL as a parameter and secrets never travel in parameters, logs or the job DB.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import fsspec

from jobdb.atomic import atomic_path, write_atomic

# Parts of a streamed upload (S3 needs >= 5 MiB per part but the last).
UPLOAD_PART_SIZE = 8 << 20

_options: Dict[str, Dict[str, Any]] = {}
_options_lock = threading.Lock()


def is_remote(url: str | os.PathLike) -> bool:
    text = str(url)
    return "://" in text and not text.startswith("file://")


def register_storage_options(url: str, options: Mapping[str, Any]) -> None:
    """fsspec options (credentials) for every `ResultsRoot(url)` opened in this process."""
    with _options_lock:
        _options[url.rstrip("/")] = dict(options)


def forget_storage_options(url: str) -> None:
    with _options_lock:
        _options.pop(url.rstrip("/"), None)


def fs_options(url: str, options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """fsspec options for an object-storage URL: `options`, never a cached listing (other processes,
    a resumed run, the user write there too), and on S3 the endpoint of `AWS_ENDPOINT_URL` named
    explicitly: it is then part of fsspec's instance-cache key, so another endpoint is another
    file system, not a cached client of the previous one."""
    out = dict(options or {})
    out.setdefault("use_listings_cache", False)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith(("s3://", "s3a://")) and endpoint and "endpoint_url" not in out \
            and "endpoint_url" not in out.get("client_kwargs", {}):
        out["endpoint_url"] = endpoint
    return out


class ResultsRoot:
    """A folder of results addressed by paths relative to it (`job_<id>/openEO.tif`)."""

    def __init__(self, url: str | os.PathLike, storage_options: Optional[Mapping[str, Any]] = None):
        text = str(url)
        self.local = not is_remote(text)
        if self.local:
            self.url = str(Path(text[len("file://"):] if text.startswith("file://") else text).resolve())
            self.fs = fsspec.filesystem("file")
            self.root = self.url
        else:
            self.url = text.rstrip("/")
            with _options_lock:
                registered = dict(_options.get(self.url, {}))
            options = fs_options(self.url, storage_options if storage_options is not None else registered)
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
            self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"ResultsRoot({self.url!r})"

    # --- names ------------------------------------------------------------------------------
    def path(self, relative: str = "") -> str:
        """The file system path (fsspec's, without protocol) of `relative`."""
        return f"{self.root}/{relative}" if relative else self.root

    def url_of(self, relative: str = "") -> str:
        """Where a user finds `relative`: a local path, or a URL such as `s3://bucket/prefix/x`."""
        return f"{self.url}/{relative}" if relative else self.url

    def local_path(self, relative: str = "") -> Optional[Path]:
        return Path(self.path(relative)) if self.local else None

    # --- reading ----------------------------------------------------------------------------
    def size(self, relative: str) -> Optional[int]:
        """Bytes stored at `relative`, None if nothing is there."""
        if self.local:
            try:
                return os.stat(self.path(relative)).st_size
            except (FileNotFoundError, NotADirectoryError):
                return None
        try:
            info = self.fs.info(self.path(relative))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self.path(relative))

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read_bytes(relative))

    def read_many(self, relatives: List[str]) -> Dict[str, bytes]:
        """Several small files at once (object stores fetch them concurrently); missing ones left out."""
        if not relatives:
            return {}
        found = self.fs.cat([self.path(r) for r in relatives], on_error="omit")
        by_path = {self.path(r): r for r in relatives}
        return {by_path[p]: data for p, data in found.items() if p in by_path}

    def files(self, relative: str) -> Dict[str, int]:
        """{name: size} of the files directly under the folder `relative` ({} if there is none)."""
        try:
            entries = self.fs.ls(self.path(relative), detail=True)
        except FileNotFoundError:
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e["size"]) for e in entries if e.get("type") == "file"}

    # --- writing ----------------------------------------------------------------------------
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Atomically: temp + fsync + rename locally, one PUT on object storage."""
        if not self.local:
            self.fs.pipe_file(self.path(relative), data)
            return
        target = Path(self.path(relative))
        write_atomic(target, data, temp=_part_file(target))

    def write_json(self, relative: str, document: Any, indent: Optional[int] = 2) -> None:
        self.write_bytes(relative, json.dumps(document, indent=indent).encode())

    def write_stream(self, relative: str, chunks: Iterable[bytes], verify: Callable[[int], None]) -> int:
        """Stream `chunks` to `relative`; `verify(bytes written)` raises if the count is wrong, and
        then nothing appears under `relative`. Returns the bytes written."""
        if self.local:
            return self._write_stream_local(Path(self.path(relative)), chunks, verify)
        path = self.path(relative)
        written = 0
        f = self.fs.open(path, "wb", autocommit=False, block_size=UPLOAD_PART_SIZE)
        try:
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
            verify(written)
            f.close()  # sends the last part; the object does not exist yet
            f.commit()
        except BaseException:
            f.discard()  # aborts the multipart upload: no object, no parts left behind
            raise
        stored = self.size(relative)
        if stored != written:
            self.fs.rm_file(path)
            raise OSError(f"{self.url_of(relative)}: {stored} bytes stored, {written} sent")
        return written

    @staticmethod
    def _write_stream_local(target: Path, chunks: Iterable[bytes], verify: Callable[[int], None]) -> int:
        written = 0
        with atomic_path(target, temp=_part_file(target)) as tmp:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    written += len(chunk)
            verify(written)
        return written

    def remove(self, relative: str) -> None:
        try:
            self.fs.rm_file(self.path(relative))
        except FileNotFoundError:
            pass

    def abort_unfinished_uploads(self, relative: str) -> int:
        """Abort multipart uploads under the folder `relative` that a killed run left (S3 only).
        Only the run that owns a row downloads its job, so any upload there is an orphan."""
        if self.local or "s3" not in _protocols(self.fs):
            return 0
        bucket, key, _ = self.fs.split_path(self.path(relative))
        listing = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key.rstrip("/") + "/")
        uploads: List[Tuple[str, str]] = [(u["Key"], u["UploadId"]) for u in listing.get("Uploads", [])]
        for upload_key, upload_id in uploads:
            self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload_key, UploadId=upload_id)
        return len(uploads)


def _part_file(target: Path) -> Path:
    """The temp file of a local write: one fixed name, so a killed writer's leftover is overwritten by the next."""
    return target.with_name(f".{target.name}.part")


def _protocols(fs) -> Tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
