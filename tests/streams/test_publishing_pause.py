"""`genrec models pause` / `resume` (issue 19 item 6): the trainer runs no round, so publishes nothing, while
publishing is paused; it still follows a promote or rollback."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from genrec.schemas import PublishingControl, encode
from genrec.streams.models import MODEL_KEY, PUBLISHING_KEY, PublishingSwitch, publishing_control


def _control(paused: bool) -> bytes:
    return encode(PublishingControl(paused=paused, reason="why" if paused else None, at=time.time()))


def test_the_switch_reads_the_latest_control_and_an_unreadable_one_pauses() -> None:
    switch, table = PublishingSwitch(), {}
    assert not switch.paused(table)  # never paused
    table[PUBLISHING_KEY] = _control(True)
    assert switch.paused(table) and switch.state is not None and switch.state.reason == "why"
    table[PUBLISHING_KEY] = _control(False)
    assert not switch.paused(table)
    table[PUBLISHING_KEY] = b'{"paused": maybe}'
    assert switch.paused(table)  # after a rollback, not replacing the serving version is the safe side
    assert publishing_control(True, "r", "me").paused


def test_a_paused_trainer_runs_no_round_and_still_follows() -> None:
    from genrec.streams.trainer import GenrecTrainer

    rounds: list[int] = []
    followed: list[bytes] = []
    t: Any = GenrecTrainer.__new__(GenrecTrainer)  # only what _maybe_round touches
    t.learner = SimpleNamespace(ready=lambda: True)
    t.models = {}
    t.publishing = PublishingSwitch()
    t._executor = ThreadPoolExecutor(max_workers=1)
    t._round = lambda: rounds.append(1)  # returns None: nothing to publish

    async def follow(raw: bytes) -> None:
        followed.append(raw)

    t._maybe_follow = follow
    try:
        asyncio.run(t._maybe_round())
        assert rounds == [1]
        t.models[PUBLISHING_KEY] = _control(True)
        t.models[MODEL_KEY] = b"a rollback"
        asyncio.run(t._maybe_round())
        asyncio.run(t._maybe_round())
        assert rounds == [1] and followed == [b"a rollback", b"a rollback"]
        t.models[PUBLISHING_KEY] = _control(False)
        asyncio.run(t._maybe_round())
        assert rounds == [1, 1]
    finally:
        t._executor.shutdown()
