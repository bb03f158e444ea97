"""The genrec Faust worker (design.md §5): ingest and infer agents over a per-user RocksDB table.

    genrec.events ──ingest──▶ user_history (RocksDB, changelog-backed, co-partitioned by user)
         │ query events ──────────▶ genrec.requests
    genrec.requests ──infer──▶ micro-batches ──▶ model (a child process) ──▶ genrec.results
    bad input, anywhere ──▶ genrec.deadletter

Guarantee: at least once. A request is acked only after its result (or dead letter) is confirmed by
the broker, and a partition's requests are acked in offset order; table writes stay in the per-event path
of the ingest agent (Faust cannot write tables from a batch). Every offset commit follows the commit
protocol of streams/checkpoint.py: outputs and changelogs flushed, every send confirmed, then the offsets; a
send the broker refused fails the worker instead of being committed past.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.types import EventT, StreamT
from mode import Service

from model.checkpoint import resolve_in_store
from model.tokens import action_from_event
from schemas.messages import (
    Event,
    EventType,
    ModelVersion,
    RecRequest,
    RecResult,
    ScoredItem,
    check_not_ahead,
    dead_letter,
    decode,
    encode,
    rejection,
)
from streams import history_codec, recovery_watch
from streams.app_builder import build_faust_app, install_pages, raw_topic, state_table
from streams.batcher import MicroBatcher
from streams.checkpoint import Checkpoint
from streams.metrics import CONTENT_TYPE, WorkerMetrics
from streams.models import ModelFollower, ModelsTopicTable
from streams.serving import InferenceInput, InferenceRunner, RecommenderLike, load_recommender
from streams.settings import StreamSettings

log = logging.getLogger(__name__)

HISTORY_TABLE = "user_history"
# Marks a request forwarded from a query event (for metrics; the request itself is a plain RecRequest).
SOURCE_HEADER = "genrec-source"


class KafkaOutput(Service):
    """A second, normally batched producer for results, forwards and dead letters.

    Faust's own producer must send one-record batches for the changelog's sake on the embedded broker
    (design.md §6); results do not need that, and batching them is what makes high request rates cheap.
    """

    def __init__(self, settings: StreamSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None
        # Set by the app that commits offsets over these sends (streams/checkpoint.py, step 3).
        self.checkpoint: Checkpoint | None = None

    def new_producer(self) -> AIOKafkaProducer:
        """The producer, configured but not connected (call inside the running loop)."""
        s = self.settings
        return AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"genrec-{s.worker_id}",
            acks="all",
            linger_ms=s.results_linger_ms,
            max_batch_size=s.results_max_batch_size,
            request_timeout_ms=int(s.request_timeout_s * 1000),
            **s.aiokafka_security(),
        )

    async def on_start(self) -> None:
        self.producer = self.new_producer()
        await self.producer.start()

    async def on_stop(self) -> None:
        if self.producer is not None:
            await self.producer.flush()
            await self.producer.stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Enqueue one record; the returned future resolves when the broker confirmed it."""
        assert self.producer is not None, "KafkaOutput is not started"
        fut: asyncio.Future[Any] = await self.producer.send(
            topic, value=value, key=key, timestamp_ms=timestamp_ms, headers=headers, partition=partition
        )
        if self.checkpoint is not None:
            self.checkpoint.track_send(fut, f"output {topic}")
        return fut

    async def flush(self) -> None:
        if self.producer is not None:
            await self.producer.flush()


class ModelHolder(Service):
    """Loads the model before Faust joins the group, so a worker never owns partitions it cannot serve."""

    def __init__(
        self,
        settings: StreamSettings,
        metrics: WorkerMetrics,
        loader: Callable[[], RecommenderLike] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self.runner: InferenceRunner | None = None

    async def on_start(self) -> None:
        s = self.settings
        if self._loader is not None:
            loader = self._loader
        elif s.checkpoint is not None:
            ckpt = s.checkpoint

            def loader() -> RecommenderLike:
                return load_recommender(ckpt)
        else:
            raise RuntimeError("the infer role needs a checkpoint (--checkpoint or GENREC_CHECKPOINT)")
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self._loader is None and s.inference_process and s.checkpoint is not None:
            from streams.inference_process import ProcessInferenceRunner

            ckpt_path = s.checkpoint
            runner: InferenceRunner = await loop.run_in_executor(
                None, lambda: ProcessInferenceRunner(ckpt_path, torch_threads=s.torch_threads)
            )
        else:
            runner = InferenceRunner(await loop.run_in_executor(None, loader), torch_threads=s.torch_threads)
        self.runner = runner
        max_events = runner.recommender.max_events
        if s.history_len < max_events:
            log.warning("history_len=%d keeps fewer events than the model reads (%d)", s.history_len, max_events)
        self.metrics.set_model_version(runner.version)
        log.info("model %s loaded in %.1f s", runner.version, time.perf_counter() - t0)

    async def on_stop(self) -> None:
        if self.runner is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.runner.close)


@dataclass
class _Pending:
    request: RecRequest
    source: str  # "request" | "query"
    history: bytes | None
    produced_ms: int  # Kafka timestamp of the request (or of the query event it came from)
    key: bytes
    partition: int
    offset: int
    ack: Callable[[], Awaitable[Any]]
    received: float = field(default_factory=time.perf_counter)
    # The record as it came, for its dead letter should the model fail on it.
    value: bytes | None = None
    headers: Any = None


def _header(headers: Any, name: str) -> bytes | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        if k == name:
            return v if isinstance(v, bytes) else str(v).encode()
    return None


class GenrecWorker:
    """Builds the Faust app, its topics, table, agents and web pages from one settings object."""

    def __init__(
        self, settings: StreamSettings, *, recommender_loader: Callable[[], RecommenderLike] | None = None
    ) -> None:
        s = self.settings = settings
        self.metrics = WorkerMetrics()
        self.codec = history_codec.HistoryCodec(s.history_len, s.dedup_ids)
        self._max_ahead_ms = int(s.max_ahead_s * 1000)
        self.app = app = build_faust_app(s, s.app_id, standby_replicas=s.standby_replicas)
        self.output = KafkaOutput(s)
        self.model = ModelHolder(s, self.metrics, recommender_loader)
        app.first_services.extend([self.output, self.model])
        # Commit protocol step 1 (streams/checkpoint.py): results, forwards and dead letters flushed and confirmed.
        app.checkpoint.add_output("results", self.output.flush)
        self.output.checkpoint = app.checkpoint

        self.events_topic = raw_topic(app, s.events_topic, s)
        self.requests_topic = raw_topic(app, s.requests_topic, s)
        self.results_topic = raw_topic(app, s.results_topic, s)
        self.deadletter_topic = raw_topic(app, s.deadletter_topic, s)
        # Only these agents' own acks count for their topics (streams/transport.py says why).
        app.agent_acked_topics.update({s.events_topic, s.requests_topic})
        self.history = state_table(app, HISTORY_TABLE, s)
        self.batcher: MicroBatcher[_Pending] | None = None
        # Label lookups cost a dict walk and a lock per event on the hot path: resolve them once.
        self._n_appended = self.metrics.events.labels(outcome="appended")
        self._n_duplicate = self.metrics.events.labels(outcome="duplicate")
        self._n_query = self.metrics.events.labels(outcome="query")
        app.agent(self.events_topic, name="genrec.ingest")(self._ingest_agent)
        app.agent(self.requests_topic, name="genrec.infer")(self._infer_agent)
        self.follower = self._follow_models() if s.follow_models and s.model_store is not None else None
        self.metrics.add_lag_source(self._lag)
        self._pages()

        recovery_watch.install(app, s.recovery_stall_s, self.metrics.recovery_stalls.inc)

        @app.task
        async def _declare_topics() -> None:
            # Faust declares only its internal topics; a fresh cluster also needs the ones we write to.
            for t in (self.events_topic, self.requests_topic, self.results_topic, self.deadletter_topic):
                await t.maybe_declare()

    def _follow_models(self) -> ModelFollower:
        """genrec.models through a global table; a new version is swapped in between batches (issue 4)."""
        s = self.settings
        store = s.model_store
        assert store is not None
        table = ModelsTopicTable(s)
        self.app.first_services.append(table)

        async def swap(msg: ModelVersion) -> str:
            # Loaded once, where it will serve (the inference child by default): hash, version and a test
            # inference are checked there before the switch (streams/serving.py load_version).
            runner = self.model.runner
            if runner is None:
                raise RuntimeError("no model loaded yet")
            path = resolve_in_store(store, msg.path)
            return await runner.swap(path, expected_sha256=msg.sha256, expected_version=msg.version)

        def current() -> str | None:
            return self.model.runner.version if self.model.runner else None

        def outcome(kind: str, version: str) -> None:
            self.metrics.model_swaps.labels(outcome=kind).inc()
            if kind == "swapped":
                self.metrics.set_model_version(version)

        follower = ModelFollower(table, swap, current, outcome)

        @self.app.timer(interval=s.model_poll_s)
        async def _poll_models() -> None:
            if self.model.runner is not None:
                await follower.poll()

        return follower

    # ---------------------------------------------------------------- shared helpers

    async def _dead_letter(self, message: Any, error: BaseException) -> asyncio.Future[Any]:
        """Send the rejected message with its source position and reason; resolves when confirmed."""
        reason, text = rejection(error, message.value)
        # The record whole (value, key, headers, timestamp), so that it can be redriven after a fix.
        dl = dead_letter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            value=message.value,
            reason=reason,
            error=text,
            headers=message.headers,
            timestamp_ms=self._kafka_ts_ms(message),
        )
        self.metrics.dead_letters.labels(source_topic=message.topic).inc()
        self.metrics.rejected.labels(source_topic=message.topic, reason=reason).inc()
        return await self.output.send(self.settings.deadletter_topic, message.key, encode(dl))

    @staticmethod
    def _kafka_ts_ms(message: Any) -> int:
        ts = getattr(message, "timestamp", None)
        return int(ts * 1000) if ts else int(time.time() * 1000)

    # ---------------------------------------------------------------- ingest

    async def _ingest_agent(self, stream: StreamT) -> None:
        # Manual acks: Faust acks an event whose processing raised, and commits it on the way down.
        # Here an unexpected error leaves it unacked and stops the worker, so it is processed again.
        manual = stream.noack()
        async for event in manual.events():
            try:
                await self._on_event(event)
            except Exception as exc:
                log.exception(
                    "ingest failed on %s[%d]@%d; stopping",
                    event.message.topic,
                    event.message.partition,
                    event.message.offset,
                )
                await self.app.crash(exc)
                raise
            await self._ack(manual, event)

    async def _ack(self, stream: StreamT, event: EventT) -> None:
        """Ack a message an agent has finished: on the agents' topics only these acks count
        (streams/transport.py)."""
        self.app.mark_processed(event.message)
        await stream.ack(event)

    async def _on_event(self, event: EventT) -> None:
        m = event.message
        try:
            ev: Event = decode(Event, m.value)
            check_not_ahead(ev.ts, self._max_ahead_ms)
            action = None if ev.type is EventType.QUERY else int(action_from_event(ev.type.value, ev.value))
        except ValueError as exc:
            await (await self._dead_letter(m, exc))
            self.metrics.events.labels(outcome="dead_letter").inc()
            return
        key = ev.user_id.encode("utf-8")
        if m.key != key:
            # Co-partitioning needs the user id as key: re-publish under it instead of writing state
            # into a partition whose requests are served elsewhere.
            await (await self.output.send(self.settings.events_topic, key, m.value, self._kafka_ts_ms(m)))
            self.metrics.events.labels(outcome="rekeyed").inc()
            return
        current = self.history.get(key)
        try:
            if ev.type is EventType.QUERY:
                new = await self._on_query(m, ev, key, current)
                outcome = "query"
            else:
                assert action is not None and ev.item_id is not None
                # append() recognises a redelivered event_id itself (None: nothing to write).
                new = self.codec.append(current, event_id=ev.event_id, item_id=ev.item_id, action=action, ts_ms=ev.ts)
                outcome = "appended"
        except history_codec.CorruptHistoryError as exc:
            # Never block a user forever on an unreadable value: log it and start the history afresh.
            log.error("user %r: unreadable history (%s); starting it afresh", ev.user_id, exc)
            self.history[key] = history_codec.encode(history_codec.RawHistory())
            return await self._on_event(event)
        if new is None:
            self._n_duplicate.inc()
            return
        self.history[key] = new
        (self._n_query if outcome == "query" else self._n_appended).inc()

    async def _on_query(self, m: Any, ev: Event, key: bytes, current: bytes | None) -> bytes | None:
        if self.codec.seen(current, ev.event_id):
            return None
        if self.settings.queries_as_requests:
            req = RecRequest(
                request_id=ev.event_id,
                user_id=ev.user_id,
                ts=ev.ts,
                k=self.settings.query_k,
                query=ev.query,
                exclude_seen=self.settings.query_exclude_seen,
            )
            # Confirmed before the event id is recorded: a crash in between re-forwards (a duplicate
            # result with the same request_id), never drops the search.
            fut = await self.output.send(
                self.settings.requests_topic, key, encode(req), self._kafka_ts_ms(m), [(SOURCE_HEADER, b"query")]
            )
            await fut
        return self.codec.append(current, event_id=ev.event_id, item_id=None, action=0, ts_ms=ev.ts)

    # ---------------------------------------------------------------- infer

    async def _infer_agent(self, stream: StreamT) -> None:
        s = self.settings
        manual = stream.noack()
        batcher = self.batcher = MicroBatcher(
            self._handle_batch,
            max_batch=s.max_batch,
            max_wait_s=s.max_wait_ms / 1000.0,
            max_pending=s.max_pending,
        )
        batcher.start()
        try:
            async for event in manual.events():
                await self._on_request(manual, event, batcher)
        finally:
            # Agent stopping: hand off what was received; the consumer waits for these acks (wait_empty).
            try:
                await batcher.close(timeout=s.inference_timeout_s)
            except Exception:
                log.exception("infer batcher failed while stopping")

    async def _on_request(self, manual: StreamT, event: EventT, batcher: MicroBatcher[_Pending]) -> None:
        m = event.message

        async def ack_now() -> None:
            await self._ack(manual, event)

        # A dead letter or a forward is done at once, before earlier requests still in the batcher.
        ack = self.app.checkpoint.acks.track(m.tp, ack_now)
        try:
            req: RecRequest = decode(RecRequest, m.value)
            check_not_ahead(req.ts, self._max_ahead_ms)
        except ValueError as exc:
            await (await self._dead_letter(m, exc))
            await ack()
            return
        key = req.user_id.encode("utf-8")
        if m.key != key:
            await (await self.output.send(self.settings.requests_topic, key, m.value, self._kafka_ts_ms(m)))
            await ack()
            return
        source = "query" if _header(m.headers, SOURCE_HEADER) == b"query" else "request"
        self.metrics.requests.labels(source=source).inc()
        # Read here, in the request's own partition context (the table is co-partitioned with it).
        history = self.history.get(key)
        await batcher.put(_Pending(req, source, history, self._kafka_ts_ms(m), key, m.partition, m.offset, ack,
                                   value=m.value, headers=m.headers))
        self.metrics.pending.set(batcher.pending)

    async def _handle_batch(self, batch: list[_Pending]) -> None:
        try:
            await self._serve(batch)
        except Exception as exc:
            # Results could not be confirmed: nothing of this batch is acked; crash so that a restarted
            # worker (or another replica) gets the requests again.
            log.exception("could not deliver results; crashing the worker")
            await self.app.crash(exc)
            raise

    async def _serve(self, batch: list[_Pending]) -> None:
        s = self.settings
        runner = self.model.runner
        assert runner is not None, "model not loaded"
        outcomes, seconds = await asyncio.wait_for(
            runner.infer([InferenceInput(p.request, p.history) for p in batch]), s.inference_timeout_s
        )
        self.metrics.batch_size.observe(len(batch))
        self.metrics.inference_seconds.observe(seconds)
        version = runner.last_version
        pending: list[asyncio.Future[Any]] = []
        sent_ms = []
        for p, out in zip(batch, outcomes, strict=True):
            if isinstance(out, Exception):
                self.metrics.failed_requests.inc()
                dl = dead_letter(
                    source_topic=s.requests_topic,
                    partition=p.partition,
                    offset=p.offset,
                    key=p.key,
                    value=p.value if p.value is not None else encode(p.request),
                    reason="inference",
                    error=f"{type(out).__name__}: {out}",
                    headers=p.headers,
                    timestamp_ms=p.produced_ms,
                )
                self.metrics.dead_letters.labels(source_topic=s.requests_topic).inc()
                self.metrics.rejected.labels(source_topic=s.requests_topic, reason="inference").inc()
                pending.append(await self.output.send(s.deadletter_topic, p.key, encode(dl)))
                continue
            now_ms = time.time() * 1000.0
            result = RecResult(
                request_id=p.request.request_id,
                user_id=p.request.user_id,
                query=p.request.query,
                model_version=version,
                items=[
                    ScoredItem(
                        item_id=r.item_id,
                        rank=r.rank,
                        score=float(r.score),
                        retrieval_score=float(r.retrieval_score),
                    )
                    for r in out
                ],
                latency_ms=max(0.0, now_ms - p.produced_ms),
                worker=s.worker_id,
            )
            pending.append(await self.output.send(s.results_topic, p.key, encode(result)))
            sent_ms.append(max(0.0, now_ms - p.produced_ms))
        await asyncio.gather(*pending)
        for p in batch:
            await p.ack()
        self.metrics.results.inc(len(sent_ms))
        for ms in sent_ms:
            self.metrics.e2e_seconds.observe(ms / 1000.0)
        if self.batcher is not None:
            self.metrics.pending.set(self.batcher.pending)

    # ---------------------------------------------------------------- web

    def ready(self) -> tuple[bool, dict[str, Any]]:
        app = self.app
        recovery = app.tables.recovery
        state = {
            "model_loaded": self.model.runner is not None,
            "model_version": self.model.runner.version if self.model.runner else None,
            "rebalancing": bool(app.rebalancing),
            "recovered": recovery.completed.is_set(),
            "in_recovery": bool(recovery.in_recovery),
            **self.assignment(),
        }
        ok = state["model_loaded"] and state["recovered"] and not state["rebalancing"] and not state["in_recovery"]
        self.metrics.ready.set(1 if ok else 0)
        return ok, state

    def assignment(self) -> dict[str, dict[str, list[int]]]:
        """Partitions this replica serves (`active`) and keeps warm copies of (`standby`), by topic.

        Operators read it to see the spread over replicas; the requests topic's active partitions are
        the users this replica answers, and the changelog's are the histories it holds.
        """
        assignor = self.app.assignor
        out: dict[str, dict[str, list[int]]] = {"active": {}, "standby": {}}
        for kind, tps in (("active", assignor.assigned_actives()), ("standby", assignor.assigned_standbys())):
            for tp in tps:
                out[kind].setdefault(tp.topic, []).append(tp.partition)
        self.metrics.assigned_partitions.clear()
        for kind, by_topic in out.items():
            for topic, parts in by_topic.items():
                parts.sort()
                self.metrics.assigned_partitions.labels(topic=topic, kind=kind).set(len(parts))
        return out

    def _lag(self) -> Iterable[tuple[str, int, int]]:
        mon = self.app.monitor
        read = dict(mon.tp_read_offsets)
        for tp, end in dict(mon.tp_end_offsets).items():
            r = read.get(tp)
            if r is not None and end is not None:
                yield tp.topic, tp.partition, max(0, int(end) - int(r) - 1)

    def _pages(self) -> None:
        def health() -> tuple[int, dict[str, Any]]:
            return 200, {"status": "ok", "worker": self.settings.worker_id}

        def ready() -> tuple[int, dict[str, Any]]:
            ok, state = self.ready()
            return (200 if ok else 503), {"ready": ok, **state}

        def metrics() -> bytes:
            self.ready()  # refresh the readiness gauge
            return self.metrics.render()

        install_pages(self.app, health=health, ready=ready, metrics=metrics, content_type=CONTENT_TYPE)
