"""Replies to a request's `reply_to` (streams/replies.py) without a broker: the schema's bound on the name, the
worker's prefix policy, the handler's copy of a result, and the sender's outcomes with a fake producer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from genrec.schemas.messages import (
    MAX_TOPIC_LEN,
    REPLY_TOPIC_PREFIX,
    DeadLetter,
    RecRequest,
    RecResult,
    decode,
    encode,
    rejection,
)
from genrec.streams.handlers import Record, RequestHandler, partition_for
from genrec.streams.metrics import REPLY_OUTCOMES, WorkerMetrics
from genrec.streams.replies import ReplySender, refusal
from genrec.streams.settings import StreamSettings
from pydantic import ValidationError

from tests.streams.test_handlers import NOW, MarkerRunner, Output, Store

OK_TOPIC = f"{REPLY_TOPIC_PREFIX}0123abcd"


@pytest.fixture
def settings(tmp_path: Path) -> StreamSettings:
    return StreamSettings(bootstrap="127.0.0.1:1", state_dir=tmp_path, web_enabled=False, worker_id="w-test",
                          max_pending=3, reply_timeout_s=0.5)


def _req(reply_to: str | None, rid: str = "r1") -> RecRequest:
    return RecRequest(request_id=rid, user_id="u", ts=NOW, k=2, reply_to=reply_to)


def _count(metrics: WorkerMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("genrec_replies_total", {"outcome": outcome}) or 0.0


# ------------------------------------------------------------------------------------------------ the schema


@pytest.mark.parametrize("name", [OK_TOPIC, "a", "x" * MAX_TOPIC_LEN, "genrec.replies.A-b_c.9"])
def test_reply_to_takes_any_legal_topic_name(name: str) -> None:
    assert _req(name).reply_to == name
    assert decode(RecRequest, encode(_req(name))).reply_to == name


@pytest.mark.parametrize("name", ["", ".", "..", "x" * (MAX_TOPIC_LEN + 1), "a b", "a/b", "répliques", "a\nb"])
def test_reply_to_refuses_what_is_no_topic_name(name: str) -> None:
    with pytest.raises(ValidationError):
        _req(name)


async def test_a_request_with_an_illegal_reply_to_is_dead_lettered_like_any_bad_field(
    settings: StreamSettings,
) -> None:
    out = Output()
    h = RequestHandler(settings, Store(), out, WorkerMetrics())
    raw = b'{"request_id": "r", "user_id": "u", "ts": %d, "reply_to": "../etc"}' % NOW
    rec = Record(settings.requests_topic, partition_for(b"u", settings.partitions), 0, b"u", raw, NOW)
    assert await h.accept(rec) is None
    (dl,) = [decode(DeadLetter, r["value"]) for r in out.on(settings.deadletter_topic)]
    assert dl.reason == "invalid" and "reply_to" in dl.error
    too_long = b'{"request_id": "r", "user_id": "u", "ts": %d, "reply_to": "%s"}' % (NOW, b"x" * 300)
    with pytest.raises(ValidationError) as e:
        decode(RecRequest, too_long)
    assert rejection(e.value, too_long)[0] == "out_of_bounds"


# ------------------------------------------------------------------------------------------------ the policy


def test_the_worker_replies_only_under_its_prefix_and_never_to_its_own_topics(settings: StreamSettings) -> None:
    assert refusal(OK_TOPIC, settings) is None
    assert "prefix" in (refusal("other.topic", settings) or "")
    assert "prefix" in (refusal(REPLY_TOPIC_PREFIX, settings) or "")  # the prefix alone names no client's topic
    assert "prefix" in (refusal(settings.results_topic, settings) or "")
    broad = settings.model_copy(update={"reply_topic_prefix": "genrec"})
    for own in (broad.events_topic, broad.requests_topic, broad.results_topic, broad.deadletter_topic,
                broad.models_topic, f"{broad.app_id}-user_history-changelog"):
        assert refusal(own, broad) == "one of the worker's own topics", own
    off = settings.model_copy(update={"reply_topic_prefix": ""})
    assert "off" in (refusal(OK_TOPIC, off) or "")


def test_the_prefix_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENREC_REPLY_TOPIC_PREFIX", "app.replies.")
    monkeypatch.setenv("GENREC_REPLY_TIMEOUT_S", "2.5")
    s = StreamSettings(state_dir=tmp_path)
    assert (s.reply_topic_prefix, s.reply_timeout_s) == ("app.replies.", 2.5)
    monkeypatch.setenv("GENREC_REPLY_TOPIC_PREFIX", "bad prefix/")
    with pytest.raises(ValidationError):
        StreamSettings(state_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ the handler


class Replies:
    def __init__(self) -> None:
        self.offered: list[tuple[str, bytes | None, bytes]] = []

    def offer(self, topic: str, key: bytes | None, value: bytes) -> str | None:
        self.offered.append((topic, key, value))
        return None


async def test_a_result_goes_to_the_results_topic_and_a_copy_to_its_reply_to(settings: StreamSettings) -> None:
    out, replies = Output(), Replies()
    h = RequestHandler(settings, Store(), out, WorkerMetrics(), replies=replies)
    batch = []
    for i, reply_to in enumerate([OK_TOPIC, None, "not.mine"]):
        rec = Record(settings.requests_topic, partition_for(b"u", settings.partitions), i, b"u",
                     encode(_req(reply_to, f"r{i}")), NOW)
        p = await h.accept(rec)
        assert p is not None
        batch.append(p)
    await h.serve(batch, MarkerRunner("none", RuntimeError))
    results = [decode(RecResult, r["value"]) for r in out.on(settings.results_topic)]
    assert [r.request_id for r in results] == ["r0", "r1", "r2"]  # every one on the results topic
    # The handler hands over a copy whenever there is a reply_to; the sender applies the policy.
    assert [(t, k, decode(RecResult, v).request_id) for t, k, v in replies.offered] == [
        (OK_TOPIC, b"u", "r0"), ("not.mine", b"u", "r2")]
    assert replies.offered[0][2] == out.on(settings.results_topic)[0]["value"]


# ------------------------------------------------------------------------------------------------ the sender


class FakeProducer:
    """`send` enqueues and returns a delivery future (as aiokafka's), resolved by the test; tracks topics as
    aiokafka's client does (`client._topics`)."""

    def __init__(self) -> None:
        self.client = SimpleNamespace(_topics=set())
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.deliveries: list[asyncio.Future[Any]] = []
        self.hang_on: str | None = None
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        self.client._topics.add(topic)
        if topic == self.hang_on:
            await asyncio.sleep(3600)  # aiokafka waiting for the metadata of a topic that never comes
        self.sent.append((topic, value, key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries.append(fut)
        return fut


async def _sender(settings: StreamSettings, existing: set[str]) -> tuple[ReplySender, FakeProducer, WorkerMetrics]:
    metrics = WorkerMetrics()
    sender = ReplySender(settings, metrics)
    producer = FakeProducer()
    sender.new_producer = lambda: producer  # type: ignore[method-assign]

    async def present(topics: Any) -> set[str]:
        return set(topics) & existing

    sender.present = present  # type: ignore[method-assign]
    await sender.on_start()
    return sender, producer, metrics


async def _settle(sender: ReplySender) -> None:
    for _ in range(50):
        await asyncio.sleep(0.01)
        if sender.waiting == 0:
            await asyncio.sleep(0.01)
            return


async def test_the_sender_counts_every_outcome_and_never_makes_its_caller_wait(settings: StreamSettings) -> None:
    gone = f"{REPLY_TOPIC_PREFIX}gone"
    sender, producer, metrics = await _sender(settings, existing={OK_TOPIC})
    try:
        assert {o: _count(metrics, o) for o in REPLY_OUTCOMES} == dict.fromkeys(REPLY_OUTCOMES, 0.0)
        assert sender.offer(OK_TOPIC, b"u", b"v1") is None
        assert sender.offer(gone, b"u", b"v2") is None
        assert sender.offer("elsewhere", b"u", b"v3") == "refused"  # decided at once, nothing queued
        await _settle(sender)
        assert producer.sent == [(OK_TOPIC, b"v1", b"u")]
        assert _count(metrics, "no_topic") == 1 and _count(metrics, "refused") == 1
        assert producer.client._topics == set()  # the producer's refreshes will not name (and re-create) it
        producer.deliveries[0].set_result(None)
        await asyncio.sleep(0)
        assert _count(metrics, "sent") == 1

        sender.offer(OK_TOPIC, b"u", b"v4")
        await _settle(sender)
        producer.deliveries[1].set_exception(TimeoutError("expired in the accumulator"))
        await asyncio.sleep(0)
        assert _count(metrics, "failed") == 1

        # A send that hangs (metadata that never comes) is given up after reply_timeout_s; the next one goes.
        producer.hang_on = OK_TOPIC
        sender.offer(OK_TOPIC, b"u", b"v5")
        await asyncio.sleep(settings.reply_timeout_s + 0.2)
        assert _count(metrics, "failed") == 2
        producer.hang_on = None
        sender.offer(OK_TOPIC, b"u", b"v6")
        await _settle(sender)
        assert producer.sent[-1] == (OK_TOPIC, b"v6", b"u")
    finally:
        await sender.on_stop()
    assert producer.stopped


async def test_past_max_pending_replies_are_dropped_not_waited_for(settings: StreamSettings) -> None:
    sender, producer, metrics = await _sender(settings, existing={OK_TOPIC})
    try:
        outcomes = [sender.offer(OK_TOPIC, b"u", b"v%d" % i) for i in range(settings.max_pending + 2)]
        assert outcomes.count("dropped") == 2 and _count(metrics, "dropped") == 2
        await _settle(sender)
        assert len(producer.sent) == settings.max_pending
    finally:
        await sender.on_stop()
    # Stopped: an offer is dropped, never queued for a sender that is gone.
    assert sender.offer(OK_TOPIC, b"u", b"late") == "dropped"


async def test_a_failed_existence_check_gives_the_batch_up_and_the_sender_goes_on(settings: StreamSettings) -> None:
    sender, producer, metrics = await _sender(settings, existing={OK_TOPIC})
    real_present = sender.present
    calls = 0

    async def flaky(topics: Any) -> set[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("connection reset")
        return await real_present(topics)

    sender.present = flaky  # type: ignore[method-assign]
    try:
        sender.offer(OK_TOPIC, b"u", b"v1")
        await _settle(sender)
        assert _count(metrics, "failed") == 1 and producer.sent == []
        sender.offer(OK_TOPIC, b"u", b"v2")
        await _settle(sender)
        assert producer.sent == [(OK_TOPIC, b"v2", b"u")]
    finally:
        await sender.on_stop()


async def test_replies_off_refuses_everything(settings: StreamSettings) -> None:
    off = settings.model_copy(update={"reply_topic_prefix": ""})
    metrics = WorkerMetrics()
    sender = ReplySender(off, metrics)
    await sender.on_start()  # starts no producer
    assert sender.producer is None
    assert sender.offer(OK_TOPIC, b"u", b"v") == "refused"
    await sender.on_stop()
