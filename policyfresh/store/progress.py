"""Progress of long work (documents parsed, texts embedded), for whoever shows it: the command
line draws it; in a Dagster run nothing listens and the stages' log lines tell it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
Listener = Callable[[str, int, int], None]  # (what, done, total)

_listeners: list[Listener] = []


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Tell `listener` of the progress made inside the block, in any thread of this process."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def advance(what: str, done: int, total: int) -> None:
    """`done` of `total` units of `what` are finished."""
    for listener in list(_listeners):
        listener(what, done, total)


def counted(what: str, items: Sequence[T]) -> Iterator[T]:
    """Each of `items`, telling the listeners when the work on one is done."""
    total = len(items)
    advance(what, 0, total)
    for done, item in enumerate(items, start=1):
        yield item
        advance(what, done, total)
