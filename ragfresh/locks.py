"""Single-writer guards for the stages that read, compute, then write a table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock

from ragfresh.config import Settings


@contextmanager
def writer_lock(settings: Settings, table: str) -> Iterator[None]:
    """The single writer of `table` on this machine (a file lock under the home; the Dagster
    pool does the same across run workers)."""
    settings.locks.mkdir(parents=True, exist_ok=True)
    with FileLock(settings.locks / f"{table}.lock"):
        yield
