"""Acks in arrival order per partition, whatever order the work behind them finishes in.

Why: faust-streaming 0.15.3 commits past an offset that was never acked. Its `Consumer._new_offset`
only holds back when the lowest acked offset is more than one above the committed one (and not at all
while the committed offset is 0 or unknown), so with offset C waiting in the micro-batcher and C+1
dead-lettered and acked at once, it commits C+2; a crash then loses request C. Acking a partition's
messages strictly in the order they arrived keeps every commit below the oldest unfinished request.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

Ack = Callable[[], Awaitable[Any]]


class _Slot:
    __slots__ = ("ack", "done")

    def __init__(self, ack: Ack) -> None:
        self.ack = ack
        self.done = False


class InOrderAcks:
    """`track(tp, ack)` when a message arrives; call the returned function when its work is done.

    The underlying acks run in tracking order within each partition: a message finished early waits for
    every earlier message of its partition. Different partitions never wait for each other.
    """

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[_Slot]] = {}
        self._releasing: set[Hashable] = set()

    def track(self, tp: Hashable, ack: Ack) -> Ack:
        slot = _Slot(ack)
        self._queues.setdefault(tp, deque()).append(slot)

        async def finish() -> None:
            slot.done = True
            await self._release(tp)

        return finish

    def waiting(self, tp: Hashable | None = None) -> int:
        """Messages tracked and not yet acked (done or not), for one partition or all."""
        if tp is not None:
            return len(self._queues.get(tp, ()))
        return sum(len(q) for q in self._queues.values())

    async def _release(self, tp: Hashable) -> None:
        # One releaser per partition: a finish() that lands while another one awaits an ack only marks its
        # slot, and the running loop acks it in turn (two loops could interleave their awaits out of order).
        if tp in self._releasing:
            return
        self._releasing.add(tp)
        try:
            q = self._queues.get(tp)
            while q and q[0].done:
                await q.popleft().ack()
            if q is not None and not q:
                del self._queues[tp]
        finally:
            self._releasing.discard(tp)
