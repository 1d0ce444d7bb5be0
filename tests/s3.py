"""A real S3 server for tests: moto's server in a child process on 127.0.0.1.

Not moto's in-process `ThreadedMotoServer`: delta-rs holds the GIL in some calls (setting
table properties), so a server thread in the same interpreter could not answer them and the
call stalled for three minutes of retries before failing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from tests.postgres import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    pid: int

    @property
    def environment(self) -> dict[str, str]:
        """The variables every client (delta-rs, Lance, polars, boto3) reads its S3 from."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):  # -> boto3 S3 client; imported here: only tests on S3 need boto3
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def s3_server(timeout: float = 30.0) -> Iterator[S3Server]:
    """Start moto's S3 server on a free port of 127.0.0.1; stop its process group on exit."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", pid=process.pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(f"{server.endpoint}/moto-api/", timeout=1.0)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start on port {port}") from None
                time.sleep(0.2)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
