"""Micro-batcher: size bound, time bound, order, backpressure, drain on close, errors surface."""

from __future__ import annotations

import asyncio
import time

import pytest
from genrec.streams.batcher import BatcherClosedError, MicroBatcher

pytestmark = pytest.mark.timeout(30)


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.handed_at: list[float] = []
        self.delay = delay

    async def __call__(self, batch: list[int]) -> None:
        self.handed_at.append(time.perf_counter())
        self.batches.append(batch)
        if self.delay:
            await asyncio.sleep(self.delay)


async def test_size_bound_and_full_batch_flushes_without_waiting():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=8, max_wait_s=10.0)  # a time bound far beyond the test
    b.start()
    t0 = time.perf_counter()
    for i in range(8 * 5):
        await b.put(i)
    while sum(len(x) for x in rec.batches) < 40:
        await asyncio.sleep(0.001)
    assert time.perf_counter() - t0 < 1.0, "full batches must not wait for the time bound"
    assert all(len(x) == 8 for x in rec.batches)
    assert [i for x in rec.batches for i in x] == list(range(40))
    await b.close()


async def test_time_bound_flushes_a_lone_item():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=100, max_wait_s=0.05)
    b.start()
    t0 = time.perf_counter()
    await b.put(1)
    while not rec.batches:
        await asyncio.sleep(0.001)
    waited = rec.handed_at[0] - t0
    assert 0.04 <= waited < 0.5
    assert rec.batches == [[1]]
    await b.close()


async def test_items_arriving_within_the_window_share_a_batch():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=100, max_wait_s=0.2)
    b.start()
    for i in range(5):
        await b.put(i)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.4)
    assert rec.batches == [[0, 1, 2, 3, 4]]
    await b.close()


async def test_zero_wait_hands_off_what_is_queued():
    rec = Recorder()
    b = MicroBatcher(rec, max_batch=4, max_wait_s=0.0)
    for i in range(10):  # queued before the runner starts: batches are formed from what is there
        await b.put(i)
    b.start()
    await b.close()
    assert [len(x) for x in rec.batches] == [4, 4, 2]


async def test_one_batch_at_a_time_and_backpressure():
    rec = Recorder(delay=0.1)
    b = MicroBatcher(rec, max_batch=2, max_wait_s=0.0, max_pending=2)
    b.start()
    t0 = time.perf_counter()
    for i in range(8):
        await b.put(i)
    # 8 items, 2 in flight + 2 queued at most: put() must have waited for ≥ 2 batches to finish.
    assert time.perf_counter() - t0 >= 0.15
    await b.close()
    assert [i for x in rec.batches for i in x] == list(range(8))
    gaps = [b_ - a for a, b_ in zip(rec.handed_at, rec.handed_at[1:], strict=False)]
    assert all(g >= 0.09 for g in gaps), "a batch started before the previous one finished"


async def test_close_drains_everything_put():
    rec = Recorder(delay=0.01)
    b = MicroBatcher(rec, max_batch=3, max_wait_s=5.0)
    b.start()
    for i in range(10):
        await b.put(i)
    await b.close(timeout=5)
    assert sorted(i for x in rec.batches for i in x) == list(range(10))
    with pytest.raises(BatcherClosedError):
        await b.put(11)


async def test_handler_error_surfaces_to_put_and_close():
    async def boom(batch: list[int]) -> None:
        raise RuntimeError("model exploded")

    b = MicroBatcher(boom, max_batch=1, max_wait_s=0.0)
    b.start()
    await b.put(1)
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="model exploded"):
        await b.put(2)
    with pytest.raises(RuntimeError, match="model exploded"):
        await b.close()


def test_bad_bounds():
    async def h(batch: list[int]) -> None: ...

    with pytest.raises(ValueError):
        MicroBatcher(h, max_batch=0, max_wait_s=0.1)
    with pytest.raises(ValueError):
        MicroBatcher(h, max_batch=1, max_wait_s=-1)
