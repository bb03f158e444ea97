"""The handlers (streams/handlers.py) without a broker: ingest, requests, poison records, liveness.

The history store is a dict and the output records what it sends (each send confirmed at once, or refused);
the runner is the `InferenceRunner` contract: per-request outcomes, or `InferenceCrashed`/`InferenceTimeout`
for a call that lost the model (the runner restarted its child; streams/inference_errors.py).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from genrec.schemas.messages import DeadLetter, Event, RecRequest, RecResult, decode, encode
from genrec.streams import history_codec
from genrec.streams.handlers import (
    SOURCE_HEADER,
    Attempts,
    IngestHandler,
    Liveness,
    ModelLostError,
    Record,
    RequestHandler,
    dead_letter_poison,
    partition_for,
)
from genrec.streams.inference_errors import InferenceCrashed, InferenceTimeout
from genrec.streams.metrics import WorkerMetrics
from genrec.streams.settings import StreamSettings

NOW = 1_700_000_000_000


class Store(dict):
    def set(self, key: bytes, value: bytes) -> None:
        self[key] = value


class Output:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refuse_topic: str | None = None

    async def send(self, topic: str, key: bytes | None, value: bytes, timestamp_ms: int | None = None,
                   headers: Any = None, partition: int | None = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic == self.refuse_topic:
            fut.set_exception(KafkaTimeoutError("not confirmed"))
            return fut
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers, "partition": partition})
        fut.set_result(None)
        return fut

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [r for r in self.sent if r["topic"] == topic]


@dataclass
class Ranked:
    item_id: str
    rank: int
    score: float
    retrieval_score: float


class MarkerRunner:
    """Serves every request a fixed list, except a marker request: the model crashes or hangs on it, so the
    whole call fails (as `ProcessInferenceRunner` reports a child it had to kill and restart)."""

    last_version = "v1"

    def __init__(self, marker: str, fault: type[Exception]) -> None:
        self.marker, self.fault = marker, fault
        self.calls: list[list[str]] = []

    async def infer(self, batch: Any) -> tuple[list[Any], float]:
        ids = [x.request.request_id for x in batch]
        self.calls.append(ids)
        if self.marker in ids:
            raise self.fault(f"the model {'hung' if self.fault is InferenceTimeout else 'died'} on this batch")
        return [[Ranked(f"i{n}", n + 1, 0.5, 0.1) for n in range(x.request.k)] for x in batch], 0.001


@pytest.fixture
def settings(tmp_path: Path) -> StreamSettings:
    return StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_enabled=False, worker_id="w-test")


def _event_record(s: StreamSettings, user: str, event_id: str, item: str | None = "7", *, key: str | None = None,
                  offset: int = 0, type_: str = "click", query: str | None = None) -> Record:
    ev = Event(event_id=event_id, user_id=user, ts=NOW + offset, type=type_, item_id=item, query=query)
    k = (key or user).encode()
    return Record(s.events_topic, partition_for(k, s.partitions), offset, k, encode(ev), NOW + offset)


def _request_record(s: StreamSettings, user: str, rid: str, *, key: str | None = None, offset: int = 0) -> Record:
    req = RecRequest(request_id=rid, user_id=user, ts=NOW, k=3)
    k = (key or user).encode()
    return Record(s.requests_topic, partition_for(k, s.partitions), offset, k, encode(req), NOW)


# ------------------------------------------------------------------------------------------------ ingest


async def test_ingest_appends_once_and_forwards_a_wrong_key(settings: StreamSettings) -> None:
    store, out = Store(), Output()
    h = IngestHandler(settings, store, out, WorkerMetrics())
    assert await h.handle(_event_record(settings, "u1", "e1")) == "appended"
    assert await h.handle(_event_record(settings, "u1", "e1")) == "duplicate"  # a redelivery
    assert history_codec.decode(store[b"u1"]).item_ids == ["7"]
    assert await h.handle(_event_record(settings, "u2", "e2", key="other")) == "rekeyed"
    [fwd] = out.on(settings.events_topic)
    assert fwd["key"] == b"u2" and b"u2" not in store  # state is written only where u2's requests are served
    assert fwd["partition"] == partition_for(b"u2", settings.partitions)


def test_partition_for_is_kafkas_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"u1", b"user-42", "ü".encode(), b""):
        for n in (1, 3, 6, 7):
            assert partition_for(key, n) == DefaultPartitioner()(key, list(range(n)), list(range(n)))


async def test_a_record_on_another_partition_than_its_keys_is_rerouted_first(settings: StreamSettings) -> None:
    """A producer with another partitioner (librdkafka's default: CRC32) puts a user's events where that user's
    requests are not served: the record is re-published, same key and headers, to its murmur2 partition."""
    store, out = Store(), Output()
    ingest = IngestHandler(settings, store, out, WorkerMetrics())
    requests = RequestHandler(settings, store, out, WorkerMetrics())
    right = partition_for(b"u9", settings.partitions)
    wrong = (right + 1) % settings.partitions
    ev = _event_record(settings, "u9", "e1")
    moved = Record(ev.topic, wrong, 3, ev.key, ev.value, ev.timestamp_ms, [("trace", b"t1")])
    assert await ingest.handle(moved) == "rerouted"
    assert not store  # nothing written on the wrong partition
    [fwd] = out.on(settings.events_topic)
    assert (fwd["key"], fwd["partition"], fwd["value"], fwd["headers"]) == (b"u9", right, ev.value, [("trace", b"t1")])
    assert await ingest.handle(Record(ev.topic, right, 4, ev.key, ev.value, ev.timestamp_ms)) == "appended"
    rq = _request_record(settings, "u9", "r1")
    assert await requests.accept(Record(rq.topic, wrong, 5, rq.key, rq.value, rq.timestamp_ms)) is None
    assert out.on(settings.requests_topic)[0]["partition"] == right
    assert (await requests.accept(rq)).history == store[b"u9"]  # type: ignore[union-attr]


async def test_ingest_dead_letters_bad_input_and_serves_a_query_as_a_search(settings: StreamSettings) -> None:
    store, out = Store(), Output()
    h = IngestHandler(settings, store, out, WorkerMetrics())
    bad = Record(settings.events_topic, 1, 5, b"u", b"not json", NOW)  # rejected wherever it sits
    assert await h.handle(bad) == "dead_letter"
    dl = decode(DeadLetter, out.on(settings.deadletter_topic)[0]["value"])
    assert (dl.reason, dl.offset) == ("not_json", 5)
    rec = _event_record(settings, "u3", "q1", item=None, type_="query", query="space opera")
    assert await h.handle(rec) == "query"
    [req] = out.on(settings.requests_topic)
    assert decode(RecRequest, req["value"]).query == "space opera" and req["headers"] == [(SOURCE_HEADER, b"query")]
    assert h.codec.seen(store[b"u3"], "q1")


async def test_an_unreadable_history_starts_afresh(settings: StreamSettings) -> None:
    store = Store({b"u": b"garbage"})
    h = IngestHandler(settings, store, Output(), WorkerMetrics())
    assert await h.handle(_event_record(settings, "u", "e1")) == "appended"
    assert history_codec.decode(store[b"u"]).item_ids == ["7"]


# ------------------------------------------------------------------------------------------------ requests


async def test_accept_reads_the_history_and_forwards_or_rejects(settings: StreamSettings) -> None:
    store, out = Store({b"u": b"H"}), Output()
    h = RequestHandler(settings, store, out, WorkerMetrics())
    p = await h.accept(_request_record(settings, "u", "r1"))
    assert p is not None and p.history == b"H" and p.source == "request"
    assert await h.accept(_request_record(settings, "v", "r2", key="x")) is None
    assert out.on(settings.requests_topic)[0]["key"] == b"v"
    assert await h.accept(Record(settings.requests_topic, 0, 3, b"u", b"{}", NOW)) is None
    assert decode(DeadLetter, out.on(settings.deadletter_topic)[0]["value"]).reason == "missing_field"


@pytest.mark.parametrize("fault", [InferenceCrashed, InferenceTimeout])
async def test_a_request_that_crashes_or_hangs_the_model_is_dead_lettered_as_poison(
    settings: StreamSettings, fault: type[Exception]
) -> None:
    out = Output()
    h = RequestHandler(settings, Store(), out, WorkerMetrics())
    runner = MarkerRunner("bad", fault)
    batch = [await h.accept(_request_record(settings, f"u{i}", rid, offset=i))
             for i, rid in enumerate(["a", "bad", "c", "d"])]
    await h.serve(batch, runner)  # type: ignore[arg-type]
    answered = {decode(RecResult, r["value"]).request_id for r in out.on(settings.results_topic)}
    assert answered == {"a", "c", "d"}
    [dl] = [decode(DeadLetter, r["value"]) for r in out.on(settings.deadletter_topic)]
    assert (dl.reason, dl.offset) == ("poison", 1) and fault.__name__ in dl.error
    # The batch once, then each request alone; the marker three times in all (max_attempts), no more.
    assert sum("bad" in c for c in runner.calls) == settings.max_attempts
    assert runner.calls[0] == ["a", "bad", "c", "d"] and all(len(c) == 1 for c in runner.calls[1:])


async def test_a_model_that_fails_everything_stops_the_worker_instead_of_dead_lettering_every_request(
    settings: StreamSettings,
) -> None:
    """A lost model (its checkpoint gone, a child that cannot restart) fails every call: no request is to blame,
    so after a request's last attempt a cold probe decides, and the failure goes up (the worker stops)."""
    out = Output()
    h = RequestHandler(settings, Store(), out, WorkerMetrics())
    runner = SimpleNamespace(last_version="v1", infer=_always(InferenceCrashed("could not be restarted")))
    batch = [await h.accept(_request_record(settings, f"u{i}", f"r{i}", offset=i)) for i in range(2)]
    with pytest.raises(ModelLostError, match="cold probe"):
        await h.serve(batch, runner)  # type: ignore[arg-type]
    assert not out.sent


def _always(exc: Exception) -> Any:
    async def infer(batch: Any) -> tuple[list[Any], float]:
        raise exc

    return infer


async def test_a_model_error_or_an_unbuildable_result_dead_letters_that_request_only(
    settings: StreamSettings,
) -> None:
    class Runner:
        last_version = "v1"

        async def infer(self, batch: Any) -> tuple[list[Any], float]:
            outs: list[Any] = []
            for x in batch:
                rid = x.request.request_id
                if rid == "model-error":
                    outs.append(ValueError("no such item"))
                elif rid == "nan":
                    outs.append([Ranked("i1", 1, math.nan, 0.1)])  # a score no result may carry
                else:
                    outs.append([Ranked("i1", 1, 0.9, 0.1)])
            return outs, 0.001

    out = Output()
    h = RequestHandler(settings, Store(), out, WorkerMetrics())
    batch = [await h.accept(_request_record(settings, "u", rid, offset=i))
             for i, rid in enumerate(["ok1", "model-error", "nan", "ok2"])]
    await h.serve(batch, Runner())  # type: ignore[arg-type]
    assert [decode(RecResult, r["value"]).request_id for r in out.on(settings.results_topic)] == ["ok1", "ok2"]
    dls = [decode(DeadLetter, r["value"]) for r in out.on(settings.deadletter_topic)]
    assert [(d.offset, d.reason) for d in dls] == [(1, "inference"), (2, "inference")]
    assert decode(RecRequest, dls[1].record()[1]).request_id == "nan"  # the record whole, for a redrive


async def test_a_refused_result_send_fails_the_batch(settings: StreamSettings) -> None:
    out = Output()
    out.refuse_topic = settings.results_topic
    h = RequestHandler(settings, Store(), out, WorkerMetrics())
    batch = [await h.accept(_request_record(settings, "u", "r1"))]
    with pytest.raises(KafkaTimeoutError):
        await h.serve(batch, MarkerRunner("none", InferenceCrashed))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ attempts


async def test_attempts_retry_then_dead_letter_poison_and_move_on(settings: StreamSettings) -> None:
    out = Output()
    h = IngestHandler(settings, Store(), out, WorkerMetrics())
    calls: list[int] = []

    async def flaky(rec: Record) -> str:
        calls.append(rec.offset)
        if rec.offset == 1 or len(calls) == 1:  # offset 1 always fails; offset 0 once
            raise RuntimeError(f"broken on {rec.offset}")
        return "ok"

    async def poison(rec: Record, exc: BaseException) -> None:
        await dead_letter_poison(h, rec, exc)

    attempts = Attempts(3)
    r0, r1 = _event_record(settings, "u", "e0", offset=0), _event_record(settings, "u", "e1", offset=1)
    assert await attempts.run(flaky, r0, poison) == "ok"  # failed once, then served: not poison
    assert await attempts.run(flaky, r1, poison) is None
    assert calls == [0, 0, 1, 1, 1]
    [dl] = [decode(DeadLetter, r["value"]) for r in out.on(settings.deadletter_topic)]
    assert (dl.reason, dl.offset) == ("poison", 1) and "broken on 1" in dl.error
    assert attempts.failures(r0) == attempts.failures(r1) == 0  # nothing kept for finished records


async def test_a_refused_send_is_never_counted_as_an_attempt(settings: StreamSettings) -> None:
    out = Output()
    out.refuse_topic = settings.deadletter_topic
    h = IngestHandler(settings, Store(), out, WorkerMetrics())
    bad = Record(settings.events_topic, 0, 0, b"u", b"garbage", NOW)
    poisoned: list[Record] = []

    async def poison(rec: Record, exc: BaseException) -> None:
        poisoned.append(rec)

    with pytest.raises(KafkaTimeoutError):
        await Attempts(3).run(h.handle, bad, poison)
    assert not poisoned  # the task fails; the record comes again after the restart


# ------------------------------------------------------------------------------------------------ the agents' wiring


async def test_a_failed_dead_letter_send_in_the_infer_agent_still_ends_its_ack_slot(settings: StreamSettings) -> None:
    """The slot of a request whose dead letter the broker refused used to stay open: every later request of its
    partition waited behind it, and the partition never committed again. Now the slot ends unrecorded (no
    commit passes it) and the worker fails, to restart from the last commit."""
    from genrec.streams.app import GenrecWorker

    worker = GenrecWorker(settings)
    out = Output()
    out.refuse_topic = settings.deadletter_topic
    worker.requests.output = out  # type: ignore[assignment]
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    worker.app.crash = crash  # type: ignore[method-assign]
    acked: list[tuple[int, bool]] = []

    class Stream:
        async def ack(self, event: Any) -> None:
            acked.append((event.message.offset, worker.app.take_processed(event.message)))

    def event(offset: int, value: bytes) -> Any:
        m = SimpleNamespace(topic=settings.requests_topic, partition=0, offset=offset, key=b"u", value=value,
                            headers=None, timestamp=NOW / 1000, tp=("requests", 0))
        return SimpleNamespace(message=m)

    with pytest.raises(KafkaTimeoutError):
        await worker._on_request(Stream(), event(4, b"not json"), batcher=None)  # type: ignore[arg-type]
    assert worker.app.checkpoint.acks.waiting() == 0
    assert acked == [(4, False)]  # released, not recorded as processed: no commit passes offset 4
    assert len(crashed) == 1


# ------------------------------------------------------------------------------------------------ liveness


def test_liveness_reports_work_running_too_long() -> None:
    now = [100.0]
    live = Liveness(30.0, clock=lambda: now[0])
    token = live.begin("inference batch")
    live.begin("ingest")
    now[0] += 10
    assert live.stuck() == {}
    now[0] += 25
    assert live.stuck() == {"inference batch": 35.0, "ingest": 35.0}
    live.end(token)
    assert list(live.stuck()) == ["ingest"]


async def test_health_says_stuck_or_crashed_instead_of_ok(settings: StreamSettings) -> None:
    from genrec.streams.app import GenrecWorker

    worker = GenrecWorker(settings.model_copy(update={"health_stuck_s": 0.01}))
    assert worker.health() == ("ok", {})
    token = worker.liveness.begin("inference batch")
    await asyncio.sleep(0.05)
    status, detail = worker.health()
    assert status == "stuck" and "inference batch" in detail["running_s"]
    worker.liveness.end(token)
    worker.app.checkpoint.failed = RuntimeError("changelog send failed")
    assert worker.health()[0] == "crashed"
    body = json.dumps(worker.health()[1])
    assert "changelog send failed" in body
