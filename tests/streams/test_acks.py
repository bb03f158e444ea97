"""InOrderAcks (streams/checkpoint.py): a partition's messages are acked in arrival order, whatever order their
work ends in."""

from __future__ import annotations

import asyncio

from genrec.streams.checkpoint import InOrderAcks
from hypothesis import given
from hypothesis import strategies as st


def _recorder(acked: list[tuple[str, int]], tp: str, n: int, yield_in_ack: bool = False):
    async def ack() -> None:
        if yield_in_ack:
            await asyncio.sleep(0)  # another finish() runs here
        acked.append((tp, n))

    return ack


async def test_a_message_done_early_waits_for_the_earlier_ones() -> None:
    acks, acked = InOrderAcks(), []
    finish = [acks.track("p0", _recorder(acked, "p0", i)) for i in range(3)]
    await finish[2]()
    await finish[1]()
    assert acked == [] and acks.waiting("p0") == 3
    await finish[0]()
    assert acked == [("p0", 0), ("p0", 1), ("p0", 2)]
    assert acks.waiting() == 0


async def test_partitions_do_not_wait_for_each_other() -> None:
    acks, acked = InOrderAcks(), []
    slow = acks.track("p0", _recorder(acked, "p0", 0))
    fast = acks.track("p1", _recorder(acked, "p1", 0))
    await fast()
    assert acked == [("p1", 0)]
    await slow()
    assert acked == [("p1", 0), ("p0", 0)]


async def test_concurrent_finishers_cannot_overtake_an_ack_in_flight() -> None:
    acks, acked = InOrderAcks(), []
    finish = [acks.track("p0", _recorder(acked, "p0", i, yield_in_ack=True)) for i in range(4)]
    await finish[1]()
    # 0 is acked by the first task; 2 and 3 finish while it awaits inside ack 0 or 1.
    await asyncio.gather(finish[0](), finish[3](), finish[2]())
    assert acked == [("p0", i) for i in range(4)]


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_any_finish_order_acks_each_partition_in_tracking_order(tps: list[str], rnd) -> None:
    async def run() -> list[tuple[str, int]]:
        acks, acked = InOrderAcks(), []
        finish = [acks.track(tp, _recorder(acked, tp, i, yield_in_ack=bool(i % 2))) for i, tp in enumerate(tps)]
        order = list(range(len(tps)))
        rnd.shuffle(order)
        await asyncio.gather(*(finish[i]() for i in order))
        assert acks.waiting() == 0
        return acked

    acked = asyncio.run(run())
    assert sorted(acked, key=lambda x: x[1]) == [(tp, i) for i, tp in enumerate(tps)]
    for tp in set(tps):
        assert [i for t, i in acked if t == tp] == [i for i, t in enumerate(tps) if t == tp]


def _faust_new_offset(committed: int | None, acked: list[int]) -> int | None:
    """What faust-streaming's consumer would commit for one partition, given its committed offset and acks."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.transport.consumer import Consumer
    from faust.types import TP

    tp = TP("genrec.requests", 0)
    state = SimpleNamespace(
        _acked=defaultdict(list, {tp: list(acked)}),
        _acked_index=defaultdict(set, {tp: set(acked)}),
        _gap=defaultdict(lambda: None),
        _committed_offset=defaultdict(lambda: None, {tp: committed}),
    )
    return Consumer._new_offset(state, tp)  # type: ignore[arg-type]


def test_the_faust_behaviour_that_in_order_acks_guard_against() -> None:
    # Offset 10 is committed (next to read) and still in the batcher; 11 was dead-lettered and acked first.
    # Faust commits 12 and so skips 10. If an upgrade fixes this, InOrderAcks is no longer needed.
    assert _faust_new_offset(10, [11]) == 12
    assert _faust_new_offset(None, [3, 4]) == 5  # nothing committed yet: no guard at all
    # In order, as InOrderAcks releases them, the commit never passes an unacked offset.
    assert _faust_new_offset(10, [10, 11]) == 12
    assert _faust_new_offset(10, [12]) is None
