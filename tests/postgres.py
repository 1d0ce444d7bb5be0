"""A throwaway PostgreSQL server for tests: Debian's binaries, a temporary cluster listening on
127.0.0.1 only, stopped by its own pid whatever the test did."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

SERVER_BINARIES = Path("/usr/lib/postgresql")
INSTALL = "run `make postgresql` as root, or `sudo apt-get install postgresql`"
SUPERUSER = "policyfresh"
START_TIMEOUT_SECONDS = 60
STOP_GRACE_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 10
PORT_ATTEMPTS = 5  # a free port can be taken between choosing it and the server binding it


class PostgresMissingError(RuntimeError):
    """Debian's PostgreSQL server (or, as root, its `postgres` user) is not on this machine."""


@dataclass(frozen=True)
class Postgres:
    """A running server and the one database made for the test."""

    host: str
    port: int
    user: str
    password: str
    db: str
    pid: int

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster.yaml reads its storage from."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db,
        }

    def query(self, sql: str, *params: object) -> list[tuple]:
        """Every row of one SQL query on the test's database."""
        with contextlib.closing(self.connect(self.db)) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def connect(self, db: str) -> psycopg2.extensions.connection:
        """A new connection to one of the server's databases, as the superuser."""
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,  # a listener that never answers: not ours
        )


def server_binaries() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and postgres."""
    found = [
        path.parent
        for path in SERVER_BINARIES.glob("*/bin/postgres")
        if (path.parent / "initdb").exists()
    ]
    if not found:
        raise PostgresMissingError(f"no PostgreSQL server under {SERVER_BINARIES}: {INSTALL}")
    return max(found, key=lambda path: int(path.parent.name.split(".")[0]))


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: Debian's `postgres` user when we are root (Postgres
    refuses to run as root), else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissingError(f"running as root and no `postgres` user: {INSTALL}") from None


class PortTakenError(RuntimeError):
    """Another process bound the port between its choice and the server's start."""


def candidate_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on right now (maybe not a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(server: Postgres, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the server accepts the superuser's password (only this cluster has it);
    raise if it exits first, PortTakenError when its port was in use."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            output = log.read_text()
            if "Address already in use" in output:
                raise PortTakenError(f"port {server.port} was taken")
            raise RuntimeError(f"postgres exited {process.returncode}:\n{output[-3000:]}")
        try:
            server.connect("postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                late = f"postgres refuses connections after {START_TIMEOUT_SECONDS} s"
                raise RuntimeError(f"{late}:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT) of the server by its pid, then SIGKILL of its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_postgres(db: str = "policyfresh") -> Iterator[Postgres]:
    """A new cluster in a temporary folder, its server on a free port of 127.0.0.1 (its socket in
    that folder), one database `db` owned by a superuser with a password; removed at the end."""
    binaries, account = server_binaries(), server_account()
    # Not under pytest's folder: as root, that is closed to the `postgres` user.
    root = Path(tempfile.mkdtemp(prefix="policyfresh-pg-"))
    as_server = {}
    try:
        password = secrets.token_hex(16)
        (root / "password").write_text(password)
        if account:
            as_server = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            for path in (root, root / "password"):
                os.chown(path, account.pw_uid, account.pw_gid)
        data, log = root / "data", root / "postgres.log"
        initdb = subprocess.run(
            [binaries / "initdb", "-D", data, "-U", SUPERUSER, "--pwfile", root / "password",
             "--auth", "scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
            cwd=root, capture_output=True, text=True, **as_server,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb exited {initdb.returncode}:\n{initdb.stderr}")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = candidate_port()
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [binaries / "postgres", "-D", data, "-p", str(port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
                     "-c", "fsync=off"],
                    cwd=root, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, **as_server,
                )  # fmt: skip
            server = Postgres("127.0.0.1", port, SUPERUSER, password, db, process.pid)
            try:
                _ready(server, process, log)
                break
            except PortTakenError:
                if attempt == PORT_ATTEMPTS:
                    raise
            except BaseException:
                _stop(process)
                raise
        try:
            with contextlib.closing(server.connect("postgres")) as connection:
                connection.autocommit = True
                with connection.cursor() as cursor:
                    cursor.execute(f'CREATE DATABASE "{db}"')
            yield server
        finally:
            _stop(process)
    finally:
        shutil.rmtree(root)
