"""Model versions on `genrec.models` (docs/architecture.md): every replica follows the topic through a global
table (key "model" → the latest `ModelVersion`; see `ModelsTopicTable`), loads a new version off the
event loop, verifies its sha256, and swaps it in between two inference batches. A version that cannot be
loaded or verified is refused and the current one keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from genrec.model.store import VersionInfo
from genrec.schemas.messages import MAX_MESSAGE_BYTES, ModelVersion, PublishingControl, decode, encode
from genrec.streams.settings import StreamSettings
from mode import Service

log = logging.getLogger(__name__)

MODEL_KEY = b"model"
# The trainer's publishing switch (schemas.PublishingControl) on the same topic: compacted, latest wins.
PUBLISHING_KEY = b"publishing"


class ModelsTopicTable(Service):
    """A global table of the models topic: every replica reads every partition from the beginning (no consumer
    group, nothing committed) and keeps the latest value per key, so a replica that starts late still learns
    the version published last. `get(key)` is the table interface `ModelFollower` reads.

    Faust's own GlobalTable over this (external) topic was tried first: on the embedded broker the group
    leader hung in the partition assignment and the worker never became ready, so the table is read here.
    """

    def __init__(self, settings: StreamSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self._values: dict[bytes, bytes] = {}
        self._consumer: Any = None
        self.records = 0

    def get(self, key: bytes) -> bytes | None:
        return self._values.get(key)

    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        self._consumer = c = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=max(s.fetch_max_wait_ms, 50),
            request_timeout_ms=int(s.request_timeout_s * 1000), **s.aiokafka_security(),
        )
        await c.start()
        await self._declare()
        parts = await self._partitions(c)
        tps = [TopicPartition(s.models_topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)

    async def _partitions(self, consumer: Any) -> set[int]:
        """The models topic's partitions as the cluster knows them, waiting for a topic created a moment ago.

        A fresh metadata request, not `await consumer.topics()` + `partitions_for_topic()`: `topics()` leaves
        the consumer's own view as its bootstrap request filled it (every topic on Tansu, none on Apache Kafka
        4; ops.kafka_clients.topic_partitions), so a guessed `{0}` once stood in for the real answer. A topic
        just created by `_declare` may take a few metadata rounds to show up; one that never does is an error
        (reading a partition that does not exist would wait forever, silently following nothing).
        """
        s = self.settings
        deadline = time.monotonic() + s.request_timeout_s
        while True:
            cluster = await consumer._client.fetch_all_metadata()
            parts = set(cluster.partitions_for_topic(s.models_topic) or ())
            if parts:
                return parts
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the models topic {s.models_topic!r} has no partitions after {s.request_timeout_s:.0f}s: "
                    "it could not be created and does not exist (create it: genrec topics create)"
                )
            await self.sleep(0.2)

    async def _declare(self) -> None:
        """The topic must exist before it is read: one partition (ops/topics.py), compacted, created if missing.

        Compacted: it holds one key read whole, and time-based retention would one day delete the version being
        served (a replica started after that would serve its --checkpoint instead)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        s = self.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap_servers, **s.aiokafka_security())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(s.models_topic, 1, s.replication,
                                                topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            pass
        except Exception as exc:  # a cluster that forbids creating it: it may exist already; reading tells
            log.warning("could not create %s: %s", s.models_topic, exc)
        finally:
            await admin.close()

    @Service.task
    async def _read(self) -> None:
        while not self.should_stop:
            if self._consumer is None:
                await self.sleep(0.1)
                continue
            got = await self._consumer.getmany(timeout_ms=200, max_records=100)
            for msgs in got.values():
                for m in msgs:
                    if m.key is not None and m.value is not None and len(m.value) <= MAX_MESSAGE_BYTES:
                        self._values[bytes(m.key)] = bytes(m.value)
                        self.records += 1

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


class ModelFollower:
    """Polls the global table; a changed version is swapped in, or refused with the current one serving.

    `swap(msg)` (`InferenceRunner.swap` on the message's path, sha256 and version) loads the version where it
    will serve, checks its hash and version, runs a test inference, and installs it between two batches, or
    raises with nothing changed.
    """

    def __init__(self, table: Any, swap: Callable[[ModelVersion], Awaitable[str]],
                 current: Callable[[], str | None],
                 on_outcome: Callable[[str, str], None] | None = None) -> None:
        self.table = table
        self._swap = swap
        self._current = current
        self._on_outcome = on_outcome or (lambda outcome, version: None)
        self._last_raw: bytes | None = None
        self.last_error: str | None = None

    async def poll(self) -> str | None:
        """One look at the table; returns the outcome (swapped | refused | None: nothing new)."""
        raw = self.table.get(MODEL_KEY)
        if raw is None or raw == self._last_raw:
            return None
        self._last_raw = raw  # a refused record is not retried; the next published one is
        try:
            msg: ModelVersion = decode(ModelVersion, raw)
        except ValueError as exc:
            self.last_error = f"undecodable ModelVersion: {str(exc)[:200]}"
            log.error("%s", self.last_error)
            self._on_outcome("refused", "?")
            return "refused"
        if msg.version == self._current():
            return None
        t0 = time.perf_counter()
        try:
            serving = await self._swap(msg)
            if serving != msg.version:  # a runner must refuse this itself; never report another version as swapped
                raise ValueError(f"checkpoint holds version {serving}, the message names {msg.version}")
        except Exception as exc:  # a bad checkpoint must never take the serving model down
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("model %s refused, %s keeps serving: %s", msg.version, self._current(), self.last_error)
            self._on_outcome("refused", msg.version)
            return "refused"
        log.info("model %s (%s) serving after %.2f s", msg.version, msg.kind, time.perf_counter() - t0)
        self._on_outcome("swapped", msg.version)
        self.last_error = None
        return "swapped"


class PublishingSwitch:
    """Whether an operator paused the trainer's publishing (`genrec models pause`, or a rollback).

    The trainer asks before each round (`paused(table)`): while paused it runs none, so nothing is published,
    and it still follows a promote or rollback. A record that cannot be read counts as paused: the safe side
    after a rollback is not to replace the serving version. Transitions are logged once.
    """

    def __init__(self) -> None:
        self.state: PublishingControl | None = None
        self._logged: bytes | None = None

    def paused(self, table: Any) -> bool:
        raw = table.get(PUBLISHING_KEY)
        if raw is None:
            return False
        try:
            self.state = decode(PublishingControl, raw)
        except ValueError as exc:
            if raw != self._logged:
                log.error("unreadable publishing control on the models topic (%s): not publishing", exc)
            self._logged = raw
            return True
        if raw != self._logged:
            self._logged = raw
            log.warning("model publishing %s%s", "paused" if self.state.paused else "resumed",
                        f": {self.state.reason}" if self.state.reason else "")
        return self.state.paused


def publishing_control(paused: bool, reason: str | None = None, by: str | None = None) -> PublishingControl:
    return PublishingControl(paused=paused, reason=reason, at=time.time(), by=by)


async def publish_control(producer: Any, topic: str, msg: PublishingControl) -> None:
    """One record, confirmed (one-record batches on the embedded broker, as for versions)."""
    await producer.send_and_wait(topic, key=PUBLISHING_KEY, value=encode(msg))


def version_message(info: VersionInfo, kind: str = "publish") -> ModelVersion:
    return ModelVersion(version=info.version, path=str(info.path.resolve()), sha256=info.sha256, parent=info.parent,
                        created_at=info.created_at, metrics=dict(list(info.metrics.items())[:64]),
                        kind=kind)  # type: ignore[arg-type]


async def publish_version(producer: Any, topic: str, msg: ModelVersion) -> None:
    """One record, confirmed. The producer must send one-record batches on the embedded broker: the replicas'
    global tables recover this topic by its end offset (docs/architecture.md, Brokers)."""
    await producer.send_and_wait(topic, key=MODEL_KEY, value=encode(msg))
