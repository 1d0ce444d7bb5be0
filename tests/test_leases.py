"""Writer leases in the lake: one holder at a time, taken over once expired, lost loudly."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from policyfresh.store import delta_store, leases
from policyfresh.store.config import Settings
from policyfresh.store.tables import WRITER_LEASES, empty_frame


def stored_lease(settings: Settings, holder: str, expires_in: float) -> None:
    """A lease row as another process (maybe crashed) left it."""
    now = datetime.now(tz=UTC)
    row = {
        "table_name": "t",
        "holder": holder,
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=expires_in),
    }
    frame = pl.DataFrame([row], schema=empty_frame(WRITER_LEASES).schema)
    uri = settings.table_uri(WRITER_LEASES.name)
    delta_store.merge(WRITER_LEASES, uri, frame, "test", delta_store.upsert)


def holders(settings: Settings) -> list[str]:
    uri = settings.table_uri(WRITER_LEASES.name)
    return delta_store.read_table(uri, WRITER_LEASES.schema)["holder"].to_list()


@contextmanager
def logged(start: str) -> Iterator[threading.Event]:
    """An event set once `policyfresh.store.leases` logs a message starting with `start`."""
    seen = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(start):
                seen.set()

    logger, handler = logging.getLogger("policyfresh.store.leases"), Watch(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_one_holder_at_a_time_and_a_holder_may_take_it_again(settings: Settings):
    inside: list[str] = []
    errors: list[BaseException] = []
    first_in = threading.Event()

    def second() -> None:
        try:
            assert first_in.wait(timeout=120)
            with leases.lease(settings, "t"):
                inside.append("second")
        except BaseException as exc:  # raised again in the test's own thread
            errors.append(exc)

    other = threading.Thread(target=second)
    with logged("waiting for the writer lease of t") as refused:
        other.start()
        with leases.lease(settings, "t"):
            with leases.lease(settings, "t"):  # the same thread again: no wait on itself
                inside.append("first")
            first_in.set()
            assert refused.wait(timeout=120) and not errors, errors  # the other thread waits
            assert inside == ["first"]
    other.join(timeout=120)
    assert not other.is_alive() and not errors, errors
    assert inside == ["first", "second"]
    assert holders(settings) == []  # released


def test_an_expired_lease_of_a_crashed_holder_is_taken_over(settings: Settings):
    stored_lease(settings, "crashed-host:1:dead", expires_in=-1)
    with leases.lease(settings, "t"):
        [holder] = holders(settings)
        assert not holder.startswith("crashed-host")


def test_a_lease_lost_while_writing_fails_the_writer(settings, monkeypatch):
    monkeypatch.setattr(leases, "LEASE_SECONDS", 1.5)  # renewed every half second
    lost = pytest.raises(leases.LeaseLostError, match="expired while this process wrote")
    with logged("the writer lease of t was lost") as noticed, lost, leases.lease(settings, "t"):
        stored_lease(settings, "other-host:2:taker", expires_in=60)  # as after a long pause
        assert noticed.wait(timeout=60)  # by the renewer, at its next renewal
    assert holders(settings) == ["other-host:2:taker"]  # the new holder's lease is left alone
