"""How the warm run worker is reached: a Unix socket in the Dagster home, one JSON request a
connection and JSON lines back. No Dagster import here: the command line asks it cheaply."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SOCKET_NAME = "warm-worker.sock"
CONNECT_TIMEOUT_SECONDS = 2.0


def socket_path(dagster_home: Path | str) -> Path:
    """Where the worker of the instance in `dagster_home` listens."""
    return Path(dagster_home) / SOCKET_NAME


def request(path: Path, message: dict[str, Any], timeout: float | None = None) -> Iterator[dict]:
    """Send `message`, then yield each line the worker answers until it closes the connection.
    Raises OSError when no worker listens at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(CONNECT_TIMEOUT_SECONDS)
        connection.connect(str(path))
        connection.settimeout(timeout)
        connection.sendall(json.dumps(message).encode() + b"\n")
        with connection.makefile("r", encoding="utf-8") as replies:
            for line in replies:
                yield json.loads(line)


def ask(path: Path, message: dict[str, Any]) -> dict[str, Any]:
    """The worker's one answer to `message`."""
    for reply in request(path, message, timeout=CONNECT_TIMEOUT_SECONDS * 5):
        return reply
    raise ConnectionError(f"the warm run worker at {path} closed without answering")
