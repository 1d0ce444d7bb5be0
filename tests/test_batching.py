import asyncio
import threading
import time

import pytest

from policyfresh.serve.batching import Batcher, Busy


def run_with_worker(batcher: Batcher, body):
    async def main():
        worker = asyncio.create_task(batcher.run())
        try:
            return await body()
        finally:
            worker.cancel()

    return asyncio.run(main())


def test_concurrent_submissions_share_calls_and_each_gets_its_own_result():
    calls: list[list[int]] = []
    busy = threading.Lock()

    def square(items: list[int]) -> list[int]:
        assert busy.acquire(blocking=False), "called from two threads at once"
        try:
            calls.append(items)
            time.sleep(0.05)
            return [i * i for i in items]
        finally:
            busy.release()

    batcher = Batcher(square, max_batch=8, max_waiting=20)

    async def many():
        return await asyncio.gather(*(batcher.submit(i) for i in range(20)))

    assert run_with_worker(batcher, many) == [i * i for i in range(20)]
    assert sum(len(c) for c in calls) == 20
    assert len(calls) < 20 and max(len(c) for c in calls) <= 8


def test_a_failed_batch_fails_its_waiters_and_the_next_batch_still_runs():
    def work(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("cannot encode")
        return [i.upper() for i in items]

    batcher = Batcher(work, max_batch=1, max_waiting=1)

    async def body():
        with pytest.raises(ValueError, match="cannot encode"):
            await batcher.submit("bad")
        return await batcher.submit("good")

    assert run_with_worker(batcher, body) == "GOOD"


def test_past_max_waiting_a_submission_is_refused_at_once_never_queued():
    started, release = threading.Event(), threading.Event()

    def slow(items: list[int]) -> list[int]:
        started.set()
        release.wait(timeout=60)
        return items

    batcher = Batcher(slow, max_batch=1, max_waiting=2)

    async def body():
        first = asyncio.ensure_future(batcher.submit(0))
        assert await asyncio.to_thread(started.wait, 60)  # the first is taken: worked on
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await batcher.submit(3)
        release.set()
        return await asyncio.gather(first, *waiting)

    assert run_with_worker(batcher, body) == [0, 1, 2]
