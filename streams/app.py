"""The genrec Faust worker (docs/architecture.md): ingest and infer agents over a per-user RocksDB table.

    genrec.events ──ingest──▶ user_history (RocksDB, changelog-backed, co-partitioned by user)
         │ query events ──────────▶ genrec.requests
    genrec.requests ──infer──▶ micro-batches ──▶ model (a child process) ──▶ genrec.results
                                                                       └──▶ a request's reply_to (best effort)
    bad input, anywhere ──▶ genrec.deadletter

What happens to a record is decided by the handlers (streams/handlers.py, no Faust in there); the agents here
wire them to the topics, the table, the ordered acks and the micro-batcher.

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
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.types import EventT, StreamT
from genrec.model.checkpoint import resolve_in_store
from genrec.schemas.messages import ModelVersion
from genrec.streams import recovery_watch
from genrec.streams.app_builder import build_faust_app, install_pages, raw_topic, state_table
from genrec.streams.batcher import MicroBatcher
from genrec.streams.checkpoint import Checkpoint
from genrec.streams.handlers import (
    Attempts,
    IngestHandler,
    Liveness,
    Pending,
    Record,
    RequestHandler,
    dead_letter_poison,
)
from genrec.streams.metrics import CONTENT_TYPE, WorkerMetrics, install_faust_sensors
from genrec.streams.models import ModelFollower, ModelsTopicTable
from genrec.streams.replies import ReplySender
from genrec.streams.serving import InferenceRunner, RecommenderLike, load_recommender
from genrec.streams.settings import StreamSettings
from genrec.streams.transport import current_event, event_context
from mode import Service

log = logging.getLogger(__name__)

HISTORY_TABLE = "user_history"


class KafkaOutput(Service):
    """A second, normally batched producer for results, forwards and dead letters.

    Faust's own producer must send one-record batches for the changelog's sake on the embedded broker
    (docs/architecture.md, Brokers); results do not need that, and batching them is what makes high request rates cheap.
    On Apache Kafka it is idempotent like the changelog producer (StreamSettings.producer_profile).
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
        profile = s.producer_profile
        return AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"genrec-{s.worker_id}",
            acks="all",
            enable_idempotence=profile.idempotence,
            compression_type=profile.compression_type,
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


class TableStore:
    """The history table as the handlers' `HistoryStore`, with writes coalesced per user.

    A table write costs a RocksDB put and a changelog record, more than everything else the ingest does for an
    event. Writes made while Faust processes an event are held, latest per key, with the event they came from;
    `flush` writes each key once, in that event's context (its partition), and the ingest agent acks the run's
    events only after it: the commit protocol then confirms the changelog before any of their offsets is
    committed, as with one write per event. A read sees the held value, so the infer agent and the next event
    of the same user never read a stale history: holding delays only the commit. The run is flushed before every
    offset commit, like Kafka Streams flushes its record cache on commit (so a commit covers every event processed
    before it, as with one write per event), or sooner after `ingest_coalesce_max` events (or `ingest_coalesce_ms`
    when set). A crash or stop before a flush loses nothing: those events were never acked, and are read again.
    """

    def __init__(self, table: Any, on_write: Callable[[], None] | None = None) -> None:
        self.table = table
        self._held: dict[bytes, tuple[bytes, EventT]] = {}
        self._on_write = on_write

    def get(self, key: bytes) -> bytes | None:
        held = self._held.get(key)
        return held[0] if held is not None else self.table.get(key)

    def set(self, key: bytes, value: bytes) -> None:
        event = current_event()
        if event is None:  # not inside an agent: nothing to coalesce with
            self._write(key, value)
        else:
            self._held.pop(key, None)  # re-inserted last: flush writes in the order of each key's last event
            self._held[key] = (value, event)

    @property
    def held(self) -> int:
        return len(self._held)

    def flush(self) -> int:
        """Write every held value once; returns how many keys were written."""
        n = 0
        while self._held:
            key, (value, event) = next(iter(self._held.items()))
            with event_context(event):
                self._write(key, value)
            del self._held[key]
            n += 1
        return n

    def drop(self) -> None:
        """Forget the held writes (their events are not acked and will be read again)."""
        self._held.clear()

    def _write(self, key: bytes, value: bytes) -> None:
        self.table[key] = value
        if self._on_write is not None:
            self._on_write()


class ModelHolder(Service):
    """Loads the model while Faust joins the group and restores the tables, instead of before: on a restart the
    two waits overlap (issue 19 item 10, RELIABILITY.md). Nothing is served before the model is there: /ready
    says not ready and the first inference batch waits for it (`wait_loaded`). A model that cannot load fails
    the worker, as it did when loading came first."""

    def __init__(
        self,
        settings: StreamSettings,
        metrics: WorkerMetrics,
        loader: Callable[[], RecommenderLike] | None = None,
        on_failure: Callable[[BaseException], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._on_failure = on_failure
        self.runner: InferenceRunner | None = None
        self._done = asyncio.Event()
        self.error: BaseException | None = None

    async def on_start(self) -> None:
        self.add_future(self._load())

    async def wait_loaded(self) -> InferenceRunner:
        await self._done.wait()
        if self.runner is None:
            raise RuntimeError(f"the model did not load: {self.error!r}")
        return self.runner

    async def _load(self) -> None:
        try:
            self.runner = await self._open_runner()
        except BaseException as exc:
            self.error = exc
            log.error("model %s could not be loaded: %r", self.settings.checkpoint, exc)
            if self._on_failure is not None and not isinstance(exc, asyncio.CancelledError):
                await self._on_failure(exc)
            raise
        finally:
            self._done.set()

    async def _open_runner(self) -> InferenceRunner:
        s = self.settings
        if self._loader is not None:
            loader = self._loader
        elif s.checkpoint is not None:
            ckpt = s.checkpoint

            def loader() -> RecommenderLike:
                return load_recommender(ckpt, s.device)
        else:
            raise RuntimeError("the infer role needs a checkpoint (--checkpoint or GENREC_CHECKPOINT)")
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self._loader is None and s.inference_process and s.checkpoint is not None:
            from genrec.streams.inference_process import ProcessInferenceRunner

            ckpt_path = s.checkpoint
            runner: InferenceRunner = await loop.run_in_executor(
                None, lambda: ProcessInferenceRunner(ckpt_path, torch_threads=s.torch_threads,
                                                     call_timeout_s=s.inference_timeout_s, device=s.device)
            )
        else:
            runner = InferenceRunner(await loop.run_in_executor(None, loader), torch_threads=s.torch_threads,
                                     device=s.device)
        max_events = runner.recommender.max_events
        if s.history_len < max_events:
            log.warning("history_len=%d keeps fewer events than the model reads (%d)", s.history_len, max_events)
        self.metrics.set_model_version(runner.version)
        log.info("model %s loaded in %.1f s", runner.version, time.perf_counter() - t0)
        return runner

    async def on_stop(self) -> None:
        if self.runner is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.runner.close)


class GenrecWorker:
    """Builds the Faust app, its topics, table, agents and web pages from one settings object."""

    def __init__(
        self, settings: StreamSettings, *, recommender_loader: Callable[[], RecommenderLike] | None = None
    ) -> None:
        s = self.settings = settings
        self.metrics = WorkerMetrics()
        self.metrics.broker_info.labels(kind=s.producer_profile.broker_kind).set(1)
        self.app = app = build_faust_app(s, s.app_id, standby_replicas=s.standby_replicas)
        self.output = KafkaOutput(s)
        self.model = ModelHolder(s, self.metrics, recommender_loader, on_failure=app.crash)
        # Copies of results to the requests' reply_to topics: a producer of its own, outside the commit protocol
        # (streams/replies.py), so a reply to a vanished topic never holds up an ack or a commit.
        self.replies = ReplySender(s, self.metrics)
        app.first_services.extend([self.output, self.model, self.replies])
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
        self.batcher: MicroBatcher[Pending] | None = None
        # The logic, apart from Faust (streams/handlers.py); the agents below only wire it.
        store = self.store = TableStore(self.history, self.metrics.history_writes.inc)
        # The ingest agent's run of handled events whose writes `store` holds (TableStore), not yet acked.
        self._ingest_run: list[EventT] = []
        self._ingest_run_since = 0.0
        self._ingest_lock = asyncio.Lock()
        self._ingest_stream: StreamT | None = None
        self.ingest = IngestHandler(s, store, self.output, self.metrics)
        self.requests = RequestHandler(s, store, self.output, self.metrics, replies=self.replies)
        self.attempts = Attempts(s.max_attempts)
        self.liveness = Liveness(s.health_stuck_s)
        app.agent(self.events_topic, name="genrec.ingest")(self._ingest_agent)
        # The run is written and acked before every offset commit (and before a stop or revoke waits for acks).
        app.finish_held_work.append(self._flush_ingest)
        if s.ingest_coalesce_ms is not None:
            app.timer(interval=s.ingest_coalesce_ms / 1000.0)(self._flush_ingest)
        app.agent(self.requests_topic, name="genrec.infer")(self._infer_agent)
        self.follower = self._follow_models() if s.follow_models and s.model_store is not None else None
        self.metrics.add_lag_source(self._lag)
        self.metrics.add_inference_process(self._inference_pid)
        install_faust_sensors(app, self.metrics.registry)
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

    # ---------------------------------------------------------------- agents (wiring only)

    async def _ack(self, stream: StreamT, event: EventT) -> None:
        """Ack a message an agent has finished: on the agents' topics only these acks count
        (streams/transport.py)."""
        self.app.mark_processed(event.message)
        await stream.ack(event)

    async def _fail(self, stream: StreamT, event: EventT, exc: BaseException, what: str) -> None:
        """A send failed (or the handler broke past its attempts): the task fails, nothing is committed past
        this message. Its ack is released unrecorded, so that a stop does not wait for it (wait_empty)."""
        m = event.message
        log.error("%s failed on %s[%d]@%d (%r); stopping", what, m.topic, m.partition, m.offset, exc)
        await stream.ack(event)  # not marked processed: no offset recorded (transport._Consumer.ack)
        await self.app.crash(exc)

    async def _ingest_agent(self, stream: StreamT) -> None:
        # Manual acks: Faust acks an event whose processing raised, and commits it on the way down.
        manual = stream.noack()

        async def poison(rec: Record, exc: BaseException) -> None:
            await dead_letter_poison(self.ingest, rec, exc)
            self.metrics.events.labels(outcome="dead_letter").inc()

        # Events wait (in Kafka) until the model has loaded. The model gates the first answer anyway, and after a
        # restart on a broker that assigns at once (Apache Kafka) the backlog since the kill would otherwise
        # compete for the CPU with the inference child's start (a 16 s load was seen on a loaded 2-core machine).
        await self.model.wait_loaded()
        limit = self.settings.ingest_coalesce_max
        window = float("inf") if self.settings.ingest_coalesce_ms is None else self.settings.ingest_coalesce_ms / 1e3
        self._ingest_stream = manual
        try:
            async for event in manual.events():
                token = self.liveness.begin("ingest")
                try:
                    await self.attempts.run(self.ingest.handle, Record.from_message(event.message), poison)
                    if not self._ingest_run:
                        self._ingest_run_since = time.monotonic()
                    self._ingest_run.append(event)
                    if len(self._ingest_run) >= limit or time.monotonic() - self._ingest_run_since >= window:
                        await self._flush_ingest()
                except Exception as exc:
                    await self._release_ingest(keep=event)
                    await self._fail(manual, event, exc, "ingest")
                    raise
                finally:
                    self.liveness.end(token)
        finally:
            # The agent stops (a shutdown; a rebalance does not stop it, and the revoke's commit flushes the run, so
            # Faust's wait for acks ends): the held run is neither written nor committed, and is read
            # again by whoever owns its partitions next.
            await self._release_ingest()

    async def _flush_ingest(self) -> None:
        """Write the held histories, then ack the run's events (streams/app.py TableStore says why in that
        order). The consumer calls it before every offset commit (transport `finish_held_work`: the periodic
        commit, a stop's, a revoke's) and before it waits for every message to be acked (a stop or a revoke, which
        would otherwise wait forever); the agent after a full run (and a timer after `ingest_coalesce_ms`, if
        set)."""
        async with self._ingest_lock:
            run, self._ingest_run = self._ingest_run, []
            if not run:
                return
            self.store.flush()
            for done in run:
                await self._ack(self._ingest_stream, done)

    async def _release_ingest(self, keep: EventT | None = None) -> None:
        """Forget the held writes and release the run's acks unrecorded (nothing committed past them), except
        `keep`, which _fail releases."""
        self.store.drop()
        run, self._ingest_run = self._ingest_run, []
        for held in run:
            if held is not keep:
                await self._ingest_stream.ack(held)

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

    async def _on_request(self, manual: StreamT, event: EventT, batcher: MicroBatcher[Pending]) -> None:
        m = event.message

        async def ack_now() -> None:
            await self._ack(manual, event)

        async def skip_now() -> None:
            await manual.ack(event)  # not marked processed: released, no offset recorded

        # A dead letter or a forward is done at once, before earlier requests still in the batcher: the acks
        # are released in arrival order (streams/checkpoint.py).
        finish = self.app.checkpoint.acks.track(m.tp, ack_now, skip_now)
        rec = Record.from_message(m)

        async def poison(r: Record, exc: BaseException) -> None:
            await dead_letter_poison(self.requests, r, exc)

        try:
            pending = await self.attempts.run(self.requests.accept, rec, poison)
        except Exception as exc:
            # Its slot must end, or every later request of the partition waits behind it for good.
            await finish(processed=False)
            log.error("request %s[%d]@%d: %r; stopping", m.topic, m.partition, m.offset, exc)
            await self.app.crash(exc)
            raise
        if pending is None:
            await finish()
            return
        pending.finish = finish
        await batcher.put(pending)
        self.metrics.pending.set(batcher.pending)

    async def _handle_batch(self, batch: list[Pending]) -> None:
        runner = self.model.runner or await self.model.wait_loaded()  # only the first batches of a start wait
        token = self.liveness.begin("inference batch")
        try:
            await self.requests.serve(batch, runner)
        except Exception as exc:
            # Results could not be confirmed (or the runner is gone): nothing of this batch is recorded as done;
            # crash so that a restarted worker (or another replica) gets the requests again.
            log.exception("could not deliver results; crashing the worker")
            for p in batch:
                if p.finish is not None:
                    await p.finish(processed=False)
            await self.app.crash(exc)
            raise
        finally:
            self.liveness.end(token)
        for p in batch:
            if p.finish is not None:
                await p.finish()
        if self.batcher is not None:
            self.metrics.pending.set(self.batcher.pending)

    # ---------------------------------------------------------------- web

    def health(self) -> tuple[str, dict[str, Any]]:
        """Liveness: "ok"; "crashed" (the app or its batcher stopped on an error, or a send failed: the process is
        on its way out); "stuck" (an event or an inference batch running past `health_stuck_s`). A slow start
        (model loading, tables recovering) is "ok": readiness (/ready) is the gate for traffic."""
        app = self.app
        if app._crashed.is_set():
            return "crashed", {"reason": repr(app.crash_reason)[:500]}
        if app.checkpoint.failed is not None:
            return "crashed", {"reason": str(app.checkpoint.failed)[:500]}
        task = self.batcher._task if self.batcher is not None else None
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            return "crashed", {"reason": repr(task.exception())[:500]}
        stuck = self.liveness.stuck()
        if stuck:
            return "stuck", {"running_s": stuck}
        return "ok", {}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        app = self.app
        recovery = app.tables.recovery
        state = {
            "model_loaded": self.model.runner is not None,
            "model_version": self.model.runner.version if self.model.runner else None,
            "rebalancing": bool(app.rebalancing),
            "recovered": recovery.completed.is_set(),
            "in_recovery": bool(recovery.in_recovery),
            # Which broker's producer settings this replica runs with (streams/broker_kind.py).
            "broker_kind": self.settings.producer_profile.broker_kind,
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

    def _inference_pid(self) -> int | None:
        """The inference child's PID, or None (model not loaded yet, or running on a thread of this process)."""
        return getattr(self.model.runner, "pid", None)

    def _lag(self) -> Iterable[tuple[str, int, int]]:
        mon = self.app.monitor
        read = dict(mon.tp_read_offsets)
        for tp, end in dict(mon.tp_end_offsets).items():
            r = read.get(tp)
            if r is not None and end is not None:
                yield tp.topic, tp.partition, max(0, int(end) - int(r) - 1)

    def _pages(self) -> None:
        def health() -> tuple[int, dict[str, Any]]:
            status, detail = self.health()
            return (200 if status == "ok" else 503), {"status": status, "worker": self.settings.worker_id, **detail}

        def ready() -> tuple[int, dict[str, Any]]:
            ok, state = self.ready()
            return (200 if ok else 503), {"ready": ok, **state}

        def metrics() -> bytes:
            self.ready()  # refresh the readiness gauge
            return self.metrics.render()

        install_pages(self.app, health=health, ready=ready, metrics=metrics, content_type=CONTENT_TYPE)
