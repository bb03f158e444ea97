"""A micro-batcher with a size bound and a time bound, and explicit hand-off of each batch.

Why not Faust's `Stream.take()`: it acks the buffered events in a `finally` even when the body raised
(faust-streaming #497/#300), and it blocks pulling the next batch while the current one is processed
by the agent body. Here the producer side (the agent) keeps pulling into a bounded queue while one
batch is being inferred; the handler decides when each item is acknowledged.

Guarantees (unit-tested):
- a batch never holds more than `max_batch` items;
- a full batch is handed off at once, without waiting for the time bound;
- the first item of a batch waits at most `max_wait_s` (plus scheduling) before its batch is handed
  off, unless the handler is still busy with the previous batch (one batch at a time, in order);
- `close()` hands off every item already put, then returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_CLOSE = object()


class BatcherClosedError(RuntimeError):
    pass


class MicroBatcher(Generic[T]):
    def __init__(
        self,
        handler: Callable[[list[T]], Awaitable[None]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_pending: int = 0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be ≥ 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be ≥ 0")
        self.handler = handler
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # 0 = unbounded; otherwise put() waits when this many items are queued (backpressure).
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_pending)
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")
        return self._task

    async def put(self, item: T) -> None:
        if self._closed:
            raise BatcherClosedError("put() after close()")
        if self._task is not None and self._task.done():
            # The handler raised: surface it to the producer side instead of queueing forever.
            self._task.result()
            raise BatcherClosedError("the batcher stopped")
        await self._queue.put(item)

    async def close(self, timeout: float | None = None) -> None:
        """Hand off everything already put, then stop. Re-raises the handler's error, if any."""
        if self._closed:
            return
        self._closed = True
        if self._task is None:
            return
        if not self._task.done():
            # The sentinel may wait for queue space: it goes behind every queued item.
            await asyncio.wait_for(self._enqueue_close(), timeout)
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        self._task.result()

    async def _enqueue_close(self) -> None:
        while not self._task.done():  # type: ignore[union-attr]
            try:
                self._queue.put_nowait(_CLOSE)
                return
            except asyncio.QueueFull:
                await asyncio.sleep(0.001)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        q = self._queue
        done = False
        while not done:
            first = await q.get()
            if first is _CLOSE:
                return
            batch: list[T] = [first]  # type: ignore[list-item]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if q.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(q.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    item = q.get_nowait()
                if item is _CLOSE:
                    done = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self.batches += 1
            self.items += len(batch)
            await self.handler(batch)
