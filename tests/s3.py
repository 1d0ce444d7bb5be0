"""A real S3 server for tests: moto's server in a child process on 127.0.0.1, on a port the
server itself picks (a number chosen here could be taken by another process meanwhile).

Not moto's `ThreadedMotoServer` in the test's own interpreter: delta-rs holds the GIL in some
calls (setting table properties), so a server thread in the same interpreter could not answer
them and the call stalled for three minutes of retries before failing."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

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


# The server's process: moto on a port the kernel picks, which it prints, then nothing more.
SERVE = """
import os, threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
threading.Event().wait()
"""


@contextmanager
def s3_server(timeout: float = 60.0) -> Iterator[S3Server]:
    """Start moto's S3 server on 127.0.0.1; stop its process group on exit."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if not select.select([process.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"moto's S3 server did not start within {timeout:g} s")
        port = int(process.stdout.readline() or 0)
        if not port:
            raise RuntimeError(f"moto's S3 server exited with code {process.wait()}")
        server = S3Server(endpoint=f"http://127.0.0.1:{port}", pid=process.pid)
        httpx.get(f"{server.endpoint}/moto-api/", timeout=10.0).raise_for_status()
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # seen once on a loaded machine, in teardown
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stdout.close()
