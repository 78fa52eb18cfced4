"""Object-storage settings of a run: the standard AWS variables, or a prefect-aws block.

Without a block nothing is configured here: s3fs (botocore) reads `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`,
`AWS_PROFILE`, ... as every AWS tool does. With `results_storage_block` the run names a saved
prefect-aws block (`"aws-credentials/NAME"`, `"minio-credentials/NAME"` or `"s3-bucket/NAME"`);
the flow loads it, registers its options for the results root in this process's memory
(`storage.register_storage_options`) and passes on only the root URL: the secret is read from
the block, never a parameter, never logged.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from tasks.results.storage import is_remote, register_storage_options


class StorageBlockError(ValueError):
    """The named block cannot be loaded or is not an S3 credentials/bucket block."""


def _client_kwargs(block) -> Dict[str, Any]:
    params = getattr(block, "aws_client_parameters", None)
    kwargs: Dict[str, Any] = {}
    if getattr(block, "region_name", None):
        kwargs["region_name"] = block.region_name
    if params is not None:
        if params.endpoint_url:
            kwargs["endpoint_url"] = params.endpoint_url
        if params.verify is not True and params.verify is not None:
            kwargs["verify"] = params.verify if params.verify is not False else False
    return kwargs


def _secret(value) -> Optional[str]:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def s3_options(credentials) -> Dict[str, Any]:
    """s3fs options from an `AwsCredentials` or `MinIOCredentials` block."""
    options: Dict[str, Any] = {"client_kwargs": _client_kwargs(credentials)}
    if hasattr(credentials, "minio_root_user"):
        options.update(key=credentials.minio_root_user, secret=_secret(credentials.minio_root_password))
    else:
        if credentials.aws_access_key_id:
            options["key"] = credentials.aws_access_key_id
        if credentials.aws_secret_access_key is not None:
            options["secret"] = _secret(credentials.aws_secret_access_key)
        if credentials.aws_session_token:
            options["token"] = credentials.aws_session_token
        if credentials.profile_name:
            options["profile"] = credentials.profile_name
    return options


def load_storage_block(name: str) -> Tuple[Dict[str, Any], Optional[str]]:
    """(s3fs options, the bucket's root URL for an `S3Bucket` block, else None)."""
    import prefect_aws  # noqa: F401 - registers the block types Block.load looks up
    from prefect.blocks.core import Block

    if "/" not in name:
        raise StorageBlockError(f"{name!r}: name the block as TYPE/NAME, e.g. 's3-bucket/campaign-results' "
                                "or 'aws-credentials/minio'")
    try:
        block = Block.load(name)
    except (ValueError, KeyError) as exc:
        raise StorageBlockError(f"{name!r}: no such block ({exc})") from None
    if hasattr(block, "bucket_name"):
        folder = (getattr(block, "bucket_folder", "") or "").strip("/")
        url = f"s3://{block.bucket_name}" + (f"/{folder}" if folder else "")
        return s3_options(block.credentials), url
    if hasattr(block, "aws_access_key_id") or hasattr(block, "minio_root_user"):
        return s3_options(block), None
    raise StorageBlockError(f"{name!r} is a {type(block).__name__}, not an S3 credentials or bucket block")


def results_root_url(root_dir: Optional[str], default: str, storage_block: Optional[str] = None) -> str:
    """The run's results root: `root_dir`, else the `S3Bucket` block's bucket/folder, else `default`;
    the block's options are registered for it (in memory only)."""
    if not storage_block:
        return str(root_dir or default)
    options, bucket_url = load_storage_block(storage_block)
    url = str(root_dir or bucket_url or default)
    if not is_remote(url):
        raise StorageBlockError(f"{storage_block!r} gives object-storage credentials, but the results go to the "
                                f"local folder {url}: pass root_dir=s3://bucket/prefix")
    register_storage_options(url, options)
    return url


def check_writable(url: str) -> None:
    """Write and remove a probe under an object-storage root, so a wrong bucket or credentials fail
    the run in one line before any job is created (local folders are created when written)."""
    from tasks.results.storage import ResultsRoot

    if not is_remote(url):
        return
    root = ResultsRoot(url)
    probe = ".openeo-jobs-write-check"
    try:
        root.write_bytes(probe, b"ok")
        root.remove(probe)
    except Exception as exc:  # noqa: BLE001 - any failure here means: results could not be stored
        raise StorageBlockError(f"cannot write to {url}: {type(exc).__name__}: {exc}") from None
