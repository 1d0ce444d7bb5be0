"""Single-writer guards for the stages that read, compute, then write a table: a file lock
under the home when the lake is on this machine's disk, a lease in the lake itself when it is
in object storage, so that every machine writing it is excluded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock

from policyfresh.store.config import Settings
from policyfresh.store.leases import lease
from policyfresh.store.tables import WRITER_LEASES


def lock_location(settings: Settings) -> str:
    """Where the writer locks live: say it wherever a user may wait on one."""
    return str(settings.locks) if settings.lake_is_local else settings.table_uri(WRITER_LEASES.name)


@contextmanager
def writer_lock(settings: Settings, table: str) -> Iterator[None]:
    """The single writer of `table` (with the Dagster pool, which does the same across the run
    workers of one instance)."""
    if not settings.lake_is_local:
        with lease(settings, table):
            yield
        return
    settings.locks.mkdir(parents=True, exist_ok=True)
    with FileLock(settings.locks / f"{table}.lock"):
        yield
