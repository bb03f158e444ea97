"""The worker's dead letters carry the source record whole (issue 19 item 9), without a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from schemas import REDRIVE_HEADER, DeadLetter, RecRequest, decode, encode
from streams.settings import StreamSettings


class _Output:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, *args: Any, **kw: Any) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class _FailingRunner:
    version = last_version = "v-test"

    async def infer(self, batch: list[Any]) -> tuple[list[Any], float]:
        return [RuntimeError("the model broke on this one") for _ in batch], 0.01


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    from streams.app import GenrecWorker

    w = GenrecWorker(StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_enabled=False))
    w.output = _Output()  # type: ignore[assignment]
    return w


async def test_a_rejected_record_is_dead_lettered_whole(worker: Any) -> None:
    raw = b'{"event_id": "e", "user_id": "u", "ts": "soon", "type": "click", "item_id": "1"}  '
    msg = SimpleNamespace(topic=worker.settings.events_topic, partition=2, offset=17, key=b"u", value=raw,
                          headers=[("trace-id", b"abc"), (REDRIVE_HEADER, b"1")], timestamp=1_700_000_000.5)
    await (await worker._dead_letter(msg, _decode_error(raw)))
    [(topic, key, value)] = worker.output.sent
    d = decode(DeadLetter, value)
    assert (topic, key) == (worker.settings.deadletter_topic, b"u")
    assert d.record() == (b"u", raw, [("trace-id", b"abc"), (REDRIVE_HEADER, b"1")])
    assert (d.reason, d.redrives, d.timestamp_ms, d.partition, d.offset) == ("wrong_type", 1, 1_700_000_000_500, 2, 17)


async def test_a_request_the_model_failed_on_is_dead_lettered_with_its_original_bytes(worker: Any) -> None:
    from streams.app import _Pending

    raw = b'{"request_id": "r", "user_id": "u", "ts": 1700000000000, "k": 3, "extra": true}'
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    worker.model.runner = _FailingRunner()
    p = _Pending(decode(RecRequest, raw), "request", None, 1_700_000_000_000, b"u", 4, 9, ack, value=raw,
                 headers=[(REDRIVE_HEADER, b"1")])
    await worker._serve([p])
    [(topic, key, value)] = worker.output.sent
    d = decode(DeadLetter, value)
    assert (topic, key) == (worker.settings.deadletter_topic, b"u") and acked == [True]
    assert d.record() == (b"u", raw, [(REDRIVE_HEADER, b"1")])
    assert (d.reason, d.redrives, d.timestamp_ms, d.source_topic) == (
        "inference", 1, 1_700_000_000_000, worker.settings.requests_topic)
    assert d.error.startswith("inference: RuntimeError: the model broke")
    assert encode(d)  # valid


def _decode_error(raw: bytes) -> Exception:
    from schemas import Event

    try:
        decode(Event, raw)
    except ValueError as exc:
        return exc
    raise AssertionError("expected a rejection")
