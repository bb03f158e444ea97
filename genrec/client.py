"""The client for apps: send events, ask for recommendations; it needs pydantic and aiokafka only.

    async with Client("kafka-1:9092") as c:
        await c.send_event(user_id="c-1001", item_id="sku-7", type="click")
        result = await c.recommend(user_id="c-1001", k=10)   # a RecResult, or TimeoutError

Events and requests are the worker's messages (genrec.schemas.messages), validated and bounded before they are
sent, keyed by the user id (UTF-8) and partitioned by murmur2 of that key (aiokafka's default partitioner, Kafka's
default): exactly where the worker keeps the user's history and serves the user's requests, so nothing is
re-published (README, "Keys on another partition").

`recommend` waits for its own result only. At start the client creates a topic of its own, `<prefix><uuid>` (one
partition, short retention), reads it from the beginning and names it in every request's `reply_to`; the worker
sends each result there as well as to the results topic (streams/replies.py), and the client hands each result to
the call waiting for its `request_id`. `close` deletes the topic (best effort: a client killed before leaves an
empty topic behind, which an operator may delete). Where apps may not create topics, `reply_topic="..."` names a
topic created beforehand (under the worker's prefix, GENREC_REPLY_TOPIC_PREFIX); it may be shared, and each client
reads it from its end at start, keeping only its own results.

Security: any keyword argument that aiokafka's producer, consumer and admin client all take, as aiokafka spells
it (`security_protocol`, `sasl_mechanism`, `sasl_plain_username`, `sasl_plain_password`, `ssl_context`, ...);
`Client.from_env()` builds them from the GENREC_* variables the worker and the `genrec` tools read
(`ops/kafka_clients.py`: `KafkaSecurity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import DefaultPartitioner
from pydantic import TypeAdapter

from genrec.ops.kafka_clients import FAST_FETCH_MAX_WAIT_MS, KafkaSecurity, default_bootstrap, topic_partitions
from genrec.schemas.messages import (
    EVENTS_TOPIC,
    REPLY_TOPIC_PREFIX,
    REQUESTS_TOPIC,
    Event,
    EventType,
    RecRequest,
    RecResult,
    TopicName,
    decode,
    encode,
)

__all__ = ["Client", "ClientError"]

log = logging.getLogger(__name__)

# Results are read within seconds; the retention only bounds what a crashed client's topic keeps.
DEFAULT_REPLY_RETENTION_MS = 10 * 60 * 1000
_TOPIC = TypeAdapter(TopicName)


class ClientError(RuntimeError):
    """The client could not start (its reply topic could not be created or found), or it stopped reading."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Client:
    """Events in, recommendations out, for one app process (module docstring). Use as `async with`, or call
    `start()` and `close()`; the calls are coroutines of the loop that started the client."""

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        events_topic: str = EVENTS_TOPIC,
        requests_topic: str = REQUESTS_TOPIC,
        reply_topic: str | None = None,
        reply_topic_prefix: str = REPLY_TOPIC_PREFIX,
        reply_retention_ms: int = DEFAULT_REPLY_RETENTION_MS,
        reply_replication_factor: int = 1,
        fetch_max_wait_ms: int = FAST_FETCH_MAX_WAIT_MS,
        start_timeout: float = 30.0,
        **security: Any,
    ) -> None:
        """`bootstrap`: `host:port[,host:port…]` (None: $GENREC_BOOTSTRAP, else 127.0.0.1:9092). Topics default to
        the worker's. `reply_topic`: a topic created beforehand, instead of one of the client's own named
        `<reply_topic_prefix><uuid>` (1 partition, `reply_retention_ms`, `reply_replication_factor` copies)."""
        self.bootstrap = bootstrap or default_bootstrap()
        self.events_topic = events_topic
        self.requests_topic = requests_topic
        self.owns_reply_topic = reply_topic is None
        name = f"{reply_topic_prefix}{uuid.uuid4().hex}" if reply_topic is None else reply_topic
        self.reply_topic: str = _TOPIC.validate_python(name)  # a legal topic name, or ValueError now
        self.reply_retention_ms = reply_retention_ms
        self.reply_replication_factor = reply_replication_factor
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.start_timeout = start_timeout
        self._security = security
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._created = False
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[RecResult]] = {}
        self._failed: BaseException | None = None
        self._closed = False

    @classmethod
    def from_env(cls, bootstrap: str | None = None, **kwargs: Any) -> Client:
        """A client configured like the worker: $GENREC_BOOTSTRAP and the GENREC_* security variables (README)."""
        return cls(bootstrap or default_bootstrap(), **{**KafkaSecurity.from_env().client_kwargs(), **kwargs})

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> Client:
        """Connect, make the reply topic ready (created, or checked) and start reading it."""
        if self._reader is not None:
            return self
        if self._closed:
            raise ClientError("the client is closed")
        try:
            async with asyncio.timeout(self.start_timeout):
                await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def _start(self) -> None:
        kw = {"bootstrap_servers": self.bootstrap, **self._security}
        # acks=all: an event or request confirmed here survives a broker's loss. Murmur2 on the user id: the
        # worker's partition for the user (it re-publishes a record found elsewhere).
        self._producer = AIOKafkaProducer(acks="all", partitioner=DefaultPartitioner(), **kw)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False,
                                          fetch_max_wait_ms=self.fetch_max_wait_ms, **kw)
        await self._consumer.start()
        if self.owns_reply_topic:
            self._admin = AIOKafkaAdminClient(**kw)
            await self._admin.start()
            await self._create_reply_topic()
        partitions = await self._wait_for_reply_topic()
        tps = [TopicPartition(self.reply_topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        if self.owns_reply_topic:
            await self._consumer.seek_to_beginning(*tps)  # nothing written there before is anyone else's
        else:
            await self._consumer.seek_to_end(*tps)  # a shared topic: only what is answered from now on
        for tp in tps:
            await self._consumer.position(tp)  # fixed before the first request is sent
        self._reader = asyncio.create_task(self._read(), name=f"genrec-client-{self.reply_topic}")

    async def _create_reply_topic(self) -> None:
        assert self._admin is not None
        topic = NewTopic(self.reply_topic, 1, self.reply_replication_factor,
                         topic_configs={"retention.ms": str(self.reply_retention_ms), "cleanup.policy": "delete"})
        response = await self._admin.create_topics([topic])
        (entry,) = response.topic_errors
        code = entry[1]
        if code != 0:
            message = entry[2] if len(entry) > 2 else None
            raise ClientError(f"could not create the reply topic {self.reply_topic}: {for_code(code).__name__} "
                              f"({code}) {message or ''}".rstrip())
        self._created = True

    async def _wait_for_reply_topic(self) -> set[int]:
        """The reply topic's partitions once the broker's metadata shows it (a created topic takes a moment on
        Apache Kafka; the worker checks that a reply topic exists before it writes there)."""
        assert self._consumer is not None
        while True:
            partitions = await topic_partitions(self._consumer, self.reply_topic)
            if partitions:
                return partitions
            if not self.owns_reply_topic:
                raise ClientError(f"reply topic {self.reply_topic} does not exist: create it first (one partition, "
                                  "short retention, under the worker's GENREC_REPLY_TOPIC_PREFIX)")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop reading, fail the calls still waiting, delete the client's own reply topic (best effort)."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_waiting(ClientError("the client was closed"))
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._consumer = self._producer = None
        if self._admin is not None:
            if self._created:
                try:
                    async with asyncio.timeout(10.0):
                        await self._admin.delete_topics([self.reply_topic])
                except (TimeoutError, KafkaError, OSError) as exc:
                    log.warning("could not delete the reply topic %s: %r", self.reply_topic, exc)
                self._created = False
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None

    # ------------------------------------------------------------------------------------------- the calls

    async def send_event(
        self,
        *,
        user_id: str,
        item_id: str | None = None,
        type: EventType | str = EventType.CLICK,  # the message's field name
        ts: int | None = None,
        query: str | None = None,
        value: float | None = None,
        event_id: str | None = None,
    ) -> Event:
        """Validate and send one event (ts: epoch ms, default now; event_id: default a new uuid); returns it once
        the broker has confirmed it. A `query` event (type "query") is also served as a search by the worker."""
        producer = self._ready()
        ev = Event(event_id=event_id or uuid.uuid4().hex, user_id=user_id, ts=_now_ms() if ts is None else ts,
                   type=type, item_id=item_id, query=query, value=value)
        # The validated user id (whitespace stripped) is the key the worker expects byte for byte.
        await producer.send_and_wait(self.events_topic, encode(ev), key=ev.user_id.encode("utf-8"))
        return ev

    async def recommend(
        self,
        *,
        user_id: str,
        k: int = 10,
        query: str | None = None,
        exclude_seen: bool = True,
        timeout: float = 10.0,
        request_id: str | None = None,
    ) -> RecResult:
        """Ask for k items (with a query: a personalized search) and wait for this request's result;
        TimeoutError after `timeout` seconds (the request may still be answered later, and is then ignored)."""
        producer = self._ready()
        req = RecRequest(request_id=request_id or uuid.uuid4().hex, user_id=user_id, ts=_now_ms(), k=k, query=query,
                         exclude_seen=exclude_seen, reply_to=self.reply_topic)
        if req.request_id in self._waiting:
            raise ValueError(f"request_id {req.request_id!r} is already waiting for its result")
        fut: asyncio.Future[RecResult] = asyncio.get_running_loop().create_future()
        self._waiting[req.request_id] = fut  # before the send: the answer may come back first
        try:
            async with asyncio.timeout(timeout):
                await producer.send_and_wait(self.requests_topic, encode(req), key=req.user_id.encode("utf-8"))
                return await fut
        finally:
            if self._waiting.get(req.request_id) is fut:
                del self._waiting[req.request_id]

    # ------------------------------------------------------------------------------------------- reading

    def _ready(self) -> AIOKafkaProducer:
        if self._failed is not None:
            raise ClientError(f"the client stopped reading its reply topic: {self._failed!r}")
        if self._producer is None or self._reader is None:
            raise ClientError("the client is not started (use `async with Client(...)` or `await start()`)")
        return self._producer

    async def _read(self) -> None:
        assert self._consumer is not None
        try:
            while True:
                for records in (await self._consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        self._deliver(record.value)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("reading the reply topic %s failed", self.reply_topic)
            self._failed = exc
            self._fail_waiting(ClientError(f"reading the reply topic failed: {exc!r}"))

    def _deliver(self, value: bytes | None) -> None:
        try:
            result: RecResult = decode(RecResult, value)
        except ValueError as exc:
            log.warning("not a result on %s: %s", self.reply_topic, str(exc)[:200])
            return
        fut = self._waiting.get(result.request_id)  # another client's, or a duplicate: not waited for
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _fail_waiting(self, exc: BaseException) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
