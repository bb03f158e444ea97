"""ModelFollower (streams/models.py) without a broker: what a replica does with each record of the models topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genrec.model.checkpoint import CheckpointError
from genrec.schemas.messages import ModelVersion, encode
from genrec.streams.models import MODEL_KEY, ModelFollower


@dataclass
class _Rec:
    version: str


def _msg(version: str) -> bytes:
    return encode(ModelVersion(version=version, path=f"/store/versions/{version}", sha256="a" * 64,
                               created_at=time.time()))


def _follower(table: dict[bytes, bytes], load: Callable[[ModelVersion], Any]) -> tuple[ModelFollower, list[str]]:
    serving = ["v1"]
    outcomes: list[str] = []

    async def swap(msg: ModelVersion) -> str:
        # As a runner does: load (raises: nothing changes), check the version, then switch.
        rec = load(msg)
        if rec.version != msg.version:
            raise ValueError(f"checkpoint holds version {rec.version}, the message names {msg.version}")
        serving[0] = rec.version
        return rec.version

    f = ModelFollower(table, swap, lambda: serving[0], lambda kind, v: outcomes.append(f"{kind}:{v}"))
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


def test_a_swap_that_reports_another_version_is_refused() -> None:
    table = {MODEL_KEY: _msg("v2")}
    outcomes: list[str] = []

    async def swap(msg: ModelVersion) -> str:
        return "v-other"

    f = ModelFollower(table, swap, lambda: "v1", lambda kind, v: outcomes.append(f"{kind}:{v}"))
    assert asyncio.run(f.poll()) == "refused" and "v-other" in (f.last_error or "")
    assert outcomes == ["refused:v2"]
