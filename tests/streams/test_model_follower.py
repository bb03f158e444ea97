"""ModelFollower (streams/models.py) without a broker: what a replica does with each record of the models topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model.checkpoint import CheckpointError
from schemas.messages import ModelVersion, encode
from streams.models import MODEL_KEY, ModelFollower


@dataclass
class _Rec:
    version: str


def _msg(version: str) -> bytes:
    return encode(ModelVersion(version=version, path=f"/store/versions/{version}", sha256="a" * 64,
                               created_at=time.time()))


def _follower(table: dict[bytes, bytes], load: Callable[[ModelVersion], Any]) -> tuple[ModelFollower, list[str]]:
    serving = ["v1"]
    outcomes: list[str] = []

    async def swap(loader: Callable[[], Any]) -> Any:
        rec = loader()  # raises: nothing changes
        serving[0] = rec.version
        return rec

    f = ModelFollower(table, load, swap, lambda: serving[0], lambda kind, v: outcomes.append(f"{kind}:{v}"))
    return f, outcomes


def test_swaps_refuses_and_never_retries_the_same_record() -> None:
    table: dict[bytes, bytes] = {}
    loads: list[str] = []

    def load(msg: ModelVersion) -> Any:
        loads.append(msg.version)
        if msg.version == "broken":
            raise CheckpointError("sha256 does not match")
        if msg.version == "liar":
            return _Rec("someone-else")  # the directory holds another version than the message names
        return _Rec(msg.version)

    f, outcomes = _follower(table, load)

    async def main() -> None:
        assert await f.poll() is None  # nothing published yet
        table[MODEL_KEY] = _msg("v1")
        assert await f.poll() is None  # already serving it: no load
        table[MODEL_KEY] = _msg("v2")
        assert await f.poll() == "swapped"
        assert await f.poll() is None  # same record: not reloaded
        table[MODEL_KEY] = _msg("broken")
        assert await f.poll() == "refused" and "sha256" in (f.last_error or "")
        assert await f.poll() is None  # a refused record is not retried
        table[MODEL_KEY] = _msg("liar")
        assert await f.poll() == "refused"
        table[MODEL_KEY] = b'{"version": "v9"'
        assert await f.poll() == "refused"
        table[MODEL_KEY] = _msg("v3")
        assert await f.poll() == "swapped"

    asyncio.run(main())
    assert loads == ["v2", "broken", "liar", "v3"]
    assert outcomes == ["swapped:v2", "refused:broken", "refused:liar", "refused:?", "swapped:v3"]
