"""Writer leases kept in the lake itself, for a lake in object storage: every machine that
writes the lake sees them. A lease is a row of `_writer_leases` taken by a Delta merge, whose
commit is a conditional write: of two processes claiming the same free lease, one commit wins
and the other, retried, finds the lease held. The holder renews it while it works."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta

import polars as pl
from deltalake.exceptions import CommitFailedError
from deltalake.table import TableMerger

from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.tables import WRITER_LEASES, empty_frame

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # a crashed holder blocks the table this long; renewed every third of it
POLL_SECONDS = 1.0
VACUUM_EVERY = 200  # each claim and release rewrites the one small file: vacuum now and then


class LeaseLostError(PolicyfreshError):
    """The lease expired and another process took it while this one was still writing."""


_held = threading.local()  # per thread: its holder id and the depth of each lease it holds


def _holder() -> str:
    """This thread's holder id: host, process and a random part (a pid can be reused)."""
    if not hasattr(_held, "holder"):
        _held.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        _held.depth = {}
    return _held.holder


def _uri(settings: Settings) -> str:
    return settings.table_uri(WRITER_LEASES.name)


def _row(table: str, holder: str) -> pl.DataFrame:
    now = datetime.now(tz=UTC)
    row = {
        "table_name": table,
        "holder": holder,
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=LEASE_SECONDS),
    }
    return pl.DataFrame([row], schema=empty_frame(WRITER_LEASES).schema)


def _claim(merger: TableMerger) -> TableMerger:
    """Take the lease if it is free, expired or already ours (then it is renewed)."""
    mine_or_expired = "t.holder = s.holder OR t.expires_at < s.acquired_at"
    return merger.when_matched_update_all(predicate=mine_or_expired).when_not_matched_insert_all()


def _renew(merger: TableMerger) -> TableMerger:
    return merger.when_matched_update(
        {"acquired_at": "s.acquired_at", "expires_at": "s.expires_at"},
        predicate="t.holder = s.holder",
    )


def _drop(merger: TableMerger) -> TableMerger:
    return merger.when_matched_delete(predicate="t.holder = s.holder")


def _current(settings: Settings, table: str) -> dict | None:
    rows = delta_store.read_table(
        _uri(settings), WRITER_LEASES.schema, where=pl.col("table_name") == table
    )
    return rows.row(0, named=True) if rows.height else None


def acquire(settings: Settings, table: str, holder: str) -> None:
    """Wait until this holder has the lease of `table`, saying who holds it meanwhile."""
    waited_since = None
    while True:
        with suppress(CommitFailedError):  # other claims won every retry: look again
            delta_store.merge(WRITER_LEASES, _uri(settings), _row(table, holder), holder, _claim)
        lease = _current(settings, table)
        if lease and lease["holder"] == holder:
            return
        if waited_since is None or time.monotonic() - waited_since > 30:
            waited_since = time.monotonic()
            log.info(
                "waiting for the writer lease of %s in %s: held by %s until %s",
                table, _uri(settings), lease and lease["holder"], lease and lease["expires_at"],
            )  # fmt: skip
        time.sleep(POLL_SECONDS)


def renew(settings: Settings, table: str, holder: str) -> bool:
    """Extend the lease; False if it is no longer this holder's."""
    metrics = delta_store.merge(WRITER_LEASES, _uri(settings), _row(table, holder), holder, _renew)
    return metrics["num_target_rows_updated"] == 1


def release(settings: Settings, table: str, holder: str) -> None:
    delta_store.merge(WRITER_LEASES, _uri(settings), _row(table, holder), holder, _drop)
    delta = delta_store.open_table(_uri(settings))
    if delta is not None and delta.version() % VACUUM_EVERY == 0:
        delta.vacuum(retention_hours=1, enforce_retention_duration=False, dry_run=False)


@contextmanager
def lease(settings: Settings, table: str) -> Iterator[None]:
    """Hold the writer lease of `table` for the block (again if this thread holds it already),
    renewed in the background; raise `LeaseLostError` at the end if it was lost on the way."""
    holder = _holder()
    depth = _held.depth.get(table, 0)
    _held.depth[table] = depth + 1
    try:
        if depth:
            yield
        else:
            with _held_lease(settings, table, holder):
                yield
    finally:
        _held.depth[table] = depth


@contextmanager
def _held_lease(settings: Settings, table: str, holder: str) -> Iterator[None]:
    acquire(settings, table, holder)
    stop, lost = threading.Event(), threading.Event()

    def keep() -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            try:
                kept = renew(settings, table, holder)
            except (CommitFailedError, OSError) as exc:  # try again at the next tick
                log.warning("could not renew the writer lease of %s: %s", table, exc)
                continue
            if not kept:
                lost.set()
                log.error("the writer lease of %s was lost to another process", table)
                return

    renewer = threading.Thread(target=keep, name=f"lease-{table}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if not lost.is_set():
            release(settings, table, holder)
    if lost.is_set():
        raise LeaseLostError(
            f"the writer lease of {table} in {_uri(settings)} expired while this process "
            f"wrote it (longer than {LEASE_SECONDS:.0f} s without renewal); run the refresh again"
        )
