"""Replies: a result also sent to the topic its request names (`RecRequest.reply_to`), off the commit path.

An app's client (genrec/client.py) creates a topic of its own, `<prefix><uuid>`, names it in each request's
`reply_to` and reads its results there instead of scanning the whole results topic. The results topic still gets
every result (the trainer reads it for impressions); the reply is a copy, sent on a best-effort basis:

- Only under the prefix (`GENREC_REPLY_TOPIC_PREFIX`, default `genrec.replies.`; empty: no replies) and never to
  one of the worker's own topics (`refusal`): anything else is `refused`, answered on the results topic only,
  counted, and logged at most once every 10 s. A `reply_to` that is no legal topic name never gets here: the
  schema refuses the request, which is dead-lettered like any malformed field.
- Through a producer of its own, not `KafkaOutput`: the commit protocol (streams/checkpoint.py) flushes and
  confirms every send of the outputs before it commits offsets, and a reply to a topic that has vanished (its
  client closed) stays unconfirmed until aiokafka gives up on it. Replies are neither flushed nor confirmed by a
  commit: a request is acked once its result on the results topic is confirmed, whatever became of its reply.
- Never awaited by the inference path: `offer` queues (at most `max_pending` replies wait; past that `dropped`)
  and returns at once; one task sends them, each bounded by `reply_timeout_s`, which is also this producer's
  request timeout, so a batch for a topic deleted after the check expires then (`failed`).
- A topic's existence is checked first (`present`), with a Metadata request that creates nothing. aiokafka's own
  metadata requests allow auto-creation: on a broker that auto-creates topics (Tansu, the test Kafka) a reply
  would create the topic a client has just deleted again, and on one that does not, `send` would wait out the
  request timeout for the topic's metadata. A missing topic is `no_topic` at once. For the same reason the
  producer stops tracking a reply topic's metadata right after its send (`_forget`): its periodic refresh would
  name the topic, auto-creation allowed. What remains is a topic deleted in the milliseconds between the check
  and the send, which a broker that auto-creates topics may create again (empty; retention or an operator
  removes it).

Outcomes are counted in `genrec_replies_total{outcome}` (streams/metrics.py, REPLY_OUTCOMES).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest
from genrec.schemas.messages import MAX_TOPIC_LEN, TOPIC_NAME_PATTERN
from genrec.streams.metrics import REPLY_OUTCOMES, WorkerMetrics
from genrec.streams.settings import StreamSettings
from mode import Service

log = logging.getLogger(__name__)

UNKNOWN_TOPIC_OR_PARTITION = 3
# Replies sent per existence check (one Metadata request for the distinct topics of up to this many replies).
_DRAIN = 256
_LOG_EVERY_S = 10.0
_TOPIC_NAME = re.compile(TOPIC_NAME_PATTERN)


def refusal(topic: str, settings: StreamSettings) -> str | None:
    """Why the worker will not send a reply to `topic` (None: it will)."""
    prefix = settings.reply_topic_prefix
    if not prefix:
        return "replies are off (GENREC_REPLY_TOPIC_PREFIX is empty)"
    if not topic.startswith(prefix) or topic == prefix:
        return f"not a topic under the reply prefix {prefix!r}"
    if len(topic) > MAX_TOPIC_LEN or not _TOPIC_NAME.match(topic) or topic in (".", ".."):
        return "not a legal topic name"  # the schema refuses these already; a second look costs nothing
    s = settings
    if topic in {s.events_topic, s.requests_topic, s.results_topic, s.deadletter_topic, s.models_topic} or \
            topic.startswith(f"{s.app_id}-"):  # Faust's changelogs and the trainer's topics
        return "one of the worker's own topics"
    return None


class ReplySender(Service):
    """Sends results to their requests' `reply_to` topics (module docstring), counted by outcome."""

    def __init__(self, settings: StreamSettings, metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.producer: Any = None
        self._queue: asyncio.Queue[tuple[str, bytes | None, bytes]] = asyncio.Queue(maxsize=settings.max_pending)
        self._task: asyncio.Future[Any] | None = None
        self._n = {o: metrics.replies.labels(outcome=o) for o in REPLY_OUTCOMES}
        self._refused_unlogged = 0
        self._refused_logged_at = -_LOG_EVERY_S

    def new_producer(self) -> AIOKafkaProducer:
        """Its own producer (call inside the running loop): leader acks only (a lost reply is a client's timeout,
        never a lost result), and the reply timeout as request timeout."""
        s = self.settings
        return AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"genrec-{s.worker_id}-replies",
            acks=1,
            compression_type=s.producer_profile.compression_type,
            linger_ms=s.results_linger_ms,
            max_batch_size=s.results_max_batch_size,
            request_timeout_ms=int(s.reply_timeout_s * 1000),
            **s.aiokafka_security(),
        )

    async def on_start(self) -> None:
        if not self.settings.reply_topic_prefix:
            return  # replies off: everything offered is refused
        self.producer = self.new_producer()
        await self.producer.start()
        self._task = asyncio.ensure_future(self._run())

    async def on_stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.producer is not None:
            try:
                # stop() flushes: bounded, replies to vanished topics expire after the reply timeout anyway.
                await asyncio.wait_for(self.producer.stop(), self.settings.reply_timeout_s + 1.0)
            except (TimeoutError, KafkaError) as exc:
                log.warning("reply producer did not stop cleanly: %r", exc)

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def offer(self, topic: str, key: bytes | None, value: bytes) -> str | None:
        """Queue one reply; never waits. Returns the outcome when it was not queued (`refused`, `dropped`)."""
        why = refusal(topic, self.settings)
        if why is not None:
            self._count("refused")
            self._log_refused(topic, why)
            return "refused"
        if self._task is None or self._task.done():
            self._count("dropped")  # not started, or stopping
            return "dropped"
        try:
            self._queue.put_nowait((topic, key, value))
        except asyncio.QueueFull:
            self._count("dropped")
            return "dropped"
        return None

    async def present(self, topics: Iterable[str]) -> set[str]:
        """Which of `topics` exist, asked with auto-creation off (aiokafka's own metadata requests allow it)."""
        client = self.producer.client
        node = client.get_random_node()
        if node is None:
            raise KafkaError("no broker known")
        response = await client.send(node, MetadataRequest(sorted(set(topics)), allow_auto_topic_creation=False))
        return {t["topic"] for t in response.to_object()["topics"] if t["error_code"] != UNKNOWN_TOPIC_OR_PARTITION}

    # ------------------------------------------------------------------------------------------------ sending

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _DRAIN and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._send(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end replies for good, nor touch the worker
                log.exception("sending %d replies failed", len(batch))

    async def _send(self, batch: list[tuple[str, bytes | None, bytes]]) -> None:
        timeout = self.settings.reply_timeout_s
        try:
            present = await asyncio.wait_for(self.present(t for t, _, _ in batch), timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("reply topics could not be checked (%r): %d replies given up", exc, len(batch))
            self._count("failed", len(batch))
            return
        for topic, key, value in batch:
            if topic not in present:
                self._count("no_topic")
                continue
            try:
                fut = await asyncio.wait_for(self.producer.send(topic, value, key=key), timeout)
            except (TimeoutError, KafkaError) as exc:
                log.debug("reply to %s not sent: %r", topic, exc)
                self._count("failed")
                continue
            finally:
                self._forget(topic)
            fut.add_done_callback(self._delivered)

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        self._count("failed" if fut.cancelled() or fut.exception() is not None else "sent")

    def _forget(self, topic: str) -> None:
        """Stop tracking `topic` in the producer's metadata refreshes (which would create it again once deleted,
        on a broker that auto-creates topics). aiokafka 0.14 (pinned) keeps the tracked topics in
        `client._topics`; an empty set refreshes every topic, which creates nothing."""
        topics = getattr(self.producer.client, "_topics", None)
        if isinstance(topics, set):
            topics.discard(topic)

    def _count(self, outcome: str, n: int = 1) -> None:
        self._n[outcome].inc(n)

    def _log_refused(self, topic: str, why: str) -> None:
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refused_logged_at < _LOG_EVERY_S:
            return
        log.warning("reply_to %r refused (%s): answered on %s only (%d refused since the last such line)",
                    topic[:100], why, self.settings.results_topic, self._refused_unlogged)
        self._refused_logged_at = now
        self._refused_unlogged = 0
