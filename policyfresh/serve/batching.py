"""Group concurrent requests into batches: the encoder takes many questions per call and the
trace writer many rows per commit, and neither is ever called from two threads at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Busy(Exception):
    """As many items wait as the batcher may hold: the caller should come back a moment later
    rather than wait without bound."""


class Batcher(Generic[T, R]):
    """`submit` one item and await its result; `run` (one task) calls `work` on whatever is
    waiting, up to `max_batch` items, in a worker thread, one call at a time. At most
    `max_waiting` items wait: one more is refused with `Busy`."""

    def __init__(
        self, work: Callable[[list[T]], list[R]], max_batch: int, max_waiting: int
    ) -> None:
        self._work = work
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue(max_waiting)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Busy from None
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await asyncio.to_thread(self._work, [item for item, _ in batch])
            except Exception as exc:  # every waiter gets the failure, the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a waiter whose client went away is cancelled
                    future.set_result(result)
