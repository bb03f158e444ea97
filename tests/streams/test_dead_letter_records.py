"""The worker's dead letters carry the source record whole (issue 19 item 9), without a broker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from genrec.schemas import REDRIVE_HEADER, DeadLetter, RecRequest, decode, encode
from genrec.streams.settings import StreamSettings


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


class _Store(dict):
    def set(self, key: bytes, value: bytes) -> None:
        self[key] = value


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    # The handlers (streams/handlers.py) decide what is dead-lettered; they need no broker.
    from genrec.streams.handlers import IngestHandler, RequestHandler
    from genrec.streams.metrics import WorkerMetrics

    s = StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_enabled=False)
    out, metrics = _Output(), WorkerMetrics()
    return SimpleNamespace(settings=s, output=out, ingest=IngestHandler(s, _Store(), out, metrics),
                           requests=RequestHandler(s, _Store(), out, metrics))


async def test_a_rejected_record_is_dead_lettered_whole(worker: Any) -> None:
    from genrec.streams.handlers import Record

    raw = b'{"event_id": "e", "user_id": "u", "ts": "soon", "type": "click", "item_id": "1"}  '
    msg = SimpleNamespace(topic=worker.settings.events_topic, partition=2, offset=17, key=b"u", value=raw,
                          headers=[("trace-id", b"abc"), (REDRIVE_HEADER, b"1")], timestamp=1_700_000_000.5)
    assert await worker.ingest.handle(Record.from_message(msg)) == "dead_letter"
    [(topic, key, value)] = worker.output.sent
    d = decode(DeadLetter, value)
    assert (topic, key) == (worker.settings.deadletter_topic, b"u")
    assert d.record() == (b"u", raw, [("trace-id", b"abc"), (REDRIVE_HEADER, b"1")])
    assert (d.reason, d.redrives, d.timestamp_ms, d.partition, d.offset) == ("wrong_type", 1, 1_700_000_000_500, 2, 17)


async def test_a_request_the_model_failed_on_is_dead_lettered_with_its_original_bytes(worker: Any) -> None:
    from genrec.streams.handlers import Record

    raw = b'{"request_id": "r", "user_id": "u", "ts": 1700000000000, "k": 3, "extra": true}'
    from genrec.streams.handlers import partition_for

    part = partition_for(b"u", worker.settings.partitions)  # on its key's partition, or it is re-published
    rec = Record(worker.settings.requests_topic, part, 9, b"u", raw, 1_700_000_000_000, [(REDRIVE_HEADER, b"1")])
    p = await worker.requests.accept(rec)
    assert p is not None and p.request == decode(RecRequest, raw)
    await worker.requests.serve([p], _FailingRunner())
    [(topic, key, value)] = worker.output.sent
    d = decode(DeadLetter, value)
    assert (topic, key) == (worker.settings.deadletter_topic, b"u")
    assert d.record() == (b"u", raw, [(REDRIVE_HEADER, b"1")])
    assert (d.reason, d.redrives, d.timestamp_ms, d.source_topic) == (
        "inference", 1, 1_700_000_000_000, worker.settings.requests_topic)
    assert d.error.startswith("inference: RuntimeError: the model broke")
    assert encode(d)  # valid


def _decode_error(raw: bytes) -> Exception:
    from genrec.schemas import Event

    try:
        decode(Event, raw)
    except ValueError as exc:
        return exc
    raise AssertionError("expected a rejection")
