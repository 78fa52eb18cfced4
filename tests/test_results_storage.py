"""Results on object storage: S3 is moto's standalone server on loopback, the backend the simulator
over HTTP, Prefect real. Every asset is checked by its size; a SIGKILL in the middle of an upload
never leaves a row downloaded with a partial result, and the resumed run completes the upload."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tasks.results.storage import ResultsRoot
from flows.report.reporting import run_paths, summary_markdown
from flows.run_jobs import run_jobs
from simulator import start_simulator
from tests.flow_helpers import backend, fast_config
from tests.s3_server import moto_s3, s3_client
from tests.stac_checks import check_collection, open_with_pystac
from tests.test_stac_collection import bounded_db, downloaded

ROOT = Path(__file__).resolve().parents[1]
BIG = 9 << 20  # more than one 8 MiB upload part: the multipart path


_client = None


@pytest.fixture
def s3():
    global _client
    with moto_s3() as env:
        _client = s3_client(env)
        yield env


def objects(bucket: str, prefix: str):
    pages = _client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def unfinished_uploads(bucket: str):
    return [(u["Key"], u["UploadId"]) for u in _client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def assert_all_assets_stored(bucket: str, prefix: str, df: pd.DataFrame, asset_size: int, asset_count: int):
    stored = objects(bucket, prefix)
    for job_id in df.loc[df["status"] == "finished", "id"]:
        assets = {k: v for k, v in stored.items() if k.startswith(f"{prefix}/job_{job_id}/")
                  and not k.rsplit("/", 1)[-1].startswith(("job_", "."))}
        assert len(assets) == asset_count and set(assets.values()) == {asset_size}, (job_id, assets)
        assert f"{prefix}/job_{job_id}/job_{job_id}.json" in stored
        assert f"{prefix}/job_{job_id}/job_{job_id}_item.json" in stored


@pytest.mark.parametrize("failure", ["short", "connection lost"])
def test_a_cut_upload_leaves_nothing_on_s3(s3, failure):
    """A stream that ends early (the size check) or breaks (the link dropped) after a part was sent:
    no object under the final name, no unfinished upload left; a complete one is there whole."""
    from tasks.download import IncompleteDownload

    prefix = f"cut-{failure.replace(' ', '-')}"  # moto's state is per process, not per server
    root = ResultsRoot(f"s3://{s3['bucket']}/{prefix}")
    part = 8 << 20

    def chunks():
        yield b"a" * part  # one whole part reaches S3 before anything goes wrong
        if failure == "connection lost":
            raise ConnectionError("peer closed")
        yield b"b" * 100

    def verify(written):
        if written != part + 1000:
            raise IncompleteDownload(f"got {written} bytes, Content-Length says {part + 1000}")

    with pytest.raises((IncompleteDownload, ConnectionError)):
        root.write_stream("job_x/openEO.tif", chunks(), verify)
    assert objects(s3["bucket"], prefix) == {} and unfinished_uploads(s3["bucket"]) == []
    assert root.write_stream("job_x/openEO.tif", iter([b"c" * 10]), lambda n: None) == 10
    assert objects(s3["bucket"], prefix) == {f"{prefix}/job_x/openEO.tif": 10}


def test_results_collection_and_maps_on_s3(s3, tmp_path, prefect_harness):
    bucket = s3["bucket"]
    sim = start_simulator(fast_config(asset_count=2, asset_size=BIG))
    try:
        db = bounded_db(tmp_path / "jobs.parquet", 3)
        stats = run_jobs(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                         poll_interval_seconds=0.25, root_dir=f"s3://{bucket}/campaign")
    finally:
        sim.stop()
    df = pd.read_parquet(db)
    assert (df["results_status"] == "downloaded").all()
    assert_all_assets_stored(bucket, "campaign", df, BIG, 2)
    assert not list(tmp_path.glob("job_*")), "nothing went to the local folder"
    assert unfinished_uploads(bucket) == []
    collection_url = f"s3://{bucket}/campaign/collection.json"
    assert stats["collection"] == collection_url and stats["results"] == f"s3://{bucket}/campaign"
    check_collection(collection_url, downloaded(db), remote=True)  # hrefs resolve on S3, sizes right
    assert len(open_with_pystac(collection_url)) == 3
    assert stats["tile_map"] == {"png": f"s3://{bucket}/campaign/jobs_map.png",
                                 "html": f"s3://{bucket}/campaign/jobs_map.html"}
    assert objects(bucket, "campaign/jobs_map.png")
    markdown = summary_markdown(stats, [])
    assert collection_url in markdown and f"s3://{bucket}/campaign/job_<id>/" in markdown
    assert "data:image/png;base64," in markdown  # the map, read back from S3
    where = run_paths(db, stats["results"], stats["tile_map"], stats["collection"])
    assert where["results"] == f"s3://{bucket}/campaign/job_<id>/" and where["STAC collection"] == collection_url


def test_unwritable_bucket_fails_before_any_job(s3, tmp_path, prefect_harness):
    from flows.config.params import SetupError

    sim = start_simulator(fast_config())
    try:
        db = bounded_db(tmp_path / "jobs.parquet", 2)
        with pytest.raises(SetupError, match="cannot write to s3://no-such-bucket"):
            run_jobs(job_db=str(db), backends=[backend("a", sim, 3)], start_job="flows.tiling.demo_callbacks:start_job",
                     root_dir="s3://no-such-bucket/x")
        assert sim.counters()["jobs_total"] == 0
    finally:
        sim.stop()


def test_credentials_from_a_prefect_aws_block(s3, monkeypatch, prefect_harness):
    """No AWS variables: the block's key, secret and endpoint reach s3fs, and the secret nothing else."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from tasks.results.credentials import results_root_url

    AwsCredentials(aws_access_key_id=s3["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
                   region_name="us-east-1", aws_client_parameters=AwsClientParameters(
                       endpoint_url=s3["AWS_ENDPOINT_URL"])).save("moto-results", overwrite=True)
    S3Bucket(bucket_name=s3["bucket"], bucket_folder="from-block",
             credentials=AwsCredentials.load("moto-results")).save("moto-results", overwrite=True)
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    url = results_root_url(None, "/unused", "s3-bucket/moto-results")
    assert url == f"s3://{s3['bucket']}/from-block"
    root = ResultsRoot(url)
    root.write_json("probe.json", {"ok": True})
    assert root.read_json("probe.json") == {"ok": True}
    assert set(objects(s3["bucket"], "from-block")) == {"from-block/probe.json"}
    explicit = results_root_url(f"s3://{s3['bucket']}/other", "/unused", "aws-credentials/moto-results")
    ResultsRoot(explicit).write_json("p.json", [])
    assert "other/p.json" in objects(s3["bucket"], "other")


def test_sigkill_during_an_upload_then_resume(s3, tmp_path, prefect_harness):
    """The asset streams slowly (2 MiB/s, 12 MiB): the child is killed once S3 holds a part of its
    unfinished upload (watched on the server, not timed). No row is `downloaded` with a partial
    result, nothing partial is visible, and the resumed run completes the upload and the collection."""
    from prefect.settings import PREFECT_API_URL

    bucket, size = s3["bucket"], 12 << 20
    sim = start_simulator(fast_config(asset_size=size, asset_bytes_per_second=2 << 20))
    try:
        db = bounded_db(tmp_path / "jobs.parquet", 2)
        kwargs = dict(job_db=str(db), backends=[backend("a", sim, 2)], start_job="flows.tiling.demo_callbacks:start_job",
                      poll_interval_seconds=0.25, root_dir=f"s3://{bucket}/killed")
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "run_flow_process.py"), json.dumps(kwargs)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = _client
        try:
            deadline = time.monotonic() + 600  # a bound for hangs (a loaded machine)
            uploading = None
            while uploading is None:
                assert child.poll() is None, "the run ended before an upload was seen"
                assert time.monotonic() < deadline, "no upload seen"
                for key, upload_id in unfinished_uploads(bucket):
                    if client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id).get("Parts"):
                        uploading = key
                time.sleep(0.02)  # watching another process's effect on the S3 server
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        assert uploading.endswith("/openEO.tif")
        assert uploading not in objects(bucket, "killed"), "a partial asset is visible"
        df = pd.read_parquet(db)
        stored = objects(bucket, "killed")
        done = df["results_status"] == "downloaded" if "results_status" in df.columns else df["status"] != df["status"]
        for job_id in df.loc[done, "id"]:  # whatever counts as done is complete
            assert stored.get(f"killed/job_{job_id}/openEO.tif") == size
        assert f"killed/{uploading.split('/')[1]}/{uploading.split('/')[1]}_item.json" not in stored

        sim.configure(asset_bytes_per_second=None)
        stats = run_jobs(**kwargs)
    finally:
        sim.stop()
    df = pd.read_parquet(db)
    assert stats["status"] == {"finished": 2} and (df["results_status"] == "downloaded").all()
    assert_all_assets_stored(bucket, "killed", df, size, 1)
    assert unfinished_uploads(bucket) == [], "the killed upload's parts were aborted"
    check_collection(f"s3://{bucket}/killed/collection.json", downloaded(db), remote=True)
