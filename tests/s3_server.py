"""moto's standalone S3 server on loopback, for tests (a real HTTP server, not an in-process mock)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Dict, Iterator

AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@contextmanager
def moto_s3(bucket: str = "campaign-results") -> Iterator[Dict[str, str]]:
    """A moto server with one bucket; yields the AWS variables that reach it (also set in os.environ
    for this process and its children while it runs). Stopped at the end."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    before = {k: os.environ.get(k) for k in AWS_VARIABLES}
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "moto-key",
               "AWS_SECRET_ACCESS_KEY": "moto-secret", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(env)
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield {**env, "bucket": bucket}
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def s3_client(env: Dict[str, str]):
    """A boto3 client of the moto server, whatever the environment says now."""
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
