"""What the worker does with one record, apart from Faust: plain classes over a narrow history store and output.

    IngestHandler.handle(record)        an event → the user's history (or a dead letter, a forward, a search)
    RequestHandler.accept(record)       a request → a `Pending` to batch (or a dead letter, a forward)
    RequestHandler.serve(batch, runner) a batch → one result or dead letter per request, each confirmed (and a
                                        copy of a result to its request's `reply_to`, best effort: streams/replies.py)
    Attempts.run(handle, record)        a record that keeps failing → dead letter `poison`, processing moves on

The Faust agents in `streams/app.py` only wire these to topics, the table and the ordered acks; the handlers
are unit-tested without a broker (tests/streams/test_handlers.py).

Failures and who pays for them:
- bad input: dead-lettered with its reason (schemas.messages.rejection), at once, never retried;
- the model failing on one request: that request is dead-lettered (`inference`), its batch-mates answered;
- a runner that lost the model mid-call (`InferenceTimeout`/`InferenceCrashed`, after restarting its child):
  the batch is retried one request at a time; a request failing `max_attempts` times in all is
  dead-lettered (`poison`); so is a record whose handling raises `max_attempts` times;
- a send the broker refused (`SEND_FAILURES`): never retried here, never dead-lettered: it fails the task
  (streams/checkpoint.py) and the worker restarts from the last commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from genrec.model.tokens import action_from_event
from genrec.schemas.messages import (
    Event,
    EventType,
    RecRequest,
    RecResult,
    ScoredItem,
    check_not_ahead,
    dead_letter,
    decode,
    encode,
    rejection,
)
from genrec.streams import history_codec
from genrec.streams.checkpoint import SendFailedError
from genrec.streams.inference_errors import InferenceError
from genrec.streams.metrics import WorkerMetrics
from genrec.streams.serving import InferenceInput
from genrec.streams.settings import StreamSettings

log = logging.getLogger(__name__)

# Marks a request forwarded from a query event (for metrics; the request itself is a plain RecRequest).
SOURCE_HEADER = "genrec-source"
# A send the broker refused or never confirmed: the task fails, the record is neither retried nor dead-lettered.
SEND_FAILURES: tuple[type[BaseException], ...] = (KafkaError, SendFailedError)


# ---------------------------------------------------------------------------------------------- protocols


class HistoryStore(Protocol):
    """The per-user state a handler reads and writes: encoded histories by user key."""

    def get(self, key: bytes) -> bytes | None: ...

    def set(self, key: bytes, value: bytes) -> None: ...


class Output(Protocol):
    """Sends one record; the awaited call returns a future that resolves when the broker confirmed it."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> Awaitable[Any]: ...


class Replies(Protocol):
    """Where a result also goes when its request names a `reply_to` topic (streams/replies.py): queued, never
    awaited, never part of the commit."""

    def offer(self, topic: str, key: bytes | None, value: bytes) -> str | None: ...


class Runner(Protocol):
    """The part of `streams.serving.InferenceRunner` a request handler uses."""

    @property
    def last_version(self) -> str: ...

    async def infer(self, batch: Sequence[InferenceInput]) -> tuple[list[Any], float]: ...


@dataclass(frozen=True)
class Record:
    """One consumed record, as the handlers see it (no Faust types)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Any = None

    @property
    def id(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset

    @classmethod
    def from_message(cls, m: Any) -> Record:
        ts = getattr(m, "timestamp", None)
        return cls(m.topic, m.partition, m.offset, m.key, m.value,
                   int(ts * 1000) if ts else int(time.time() * 1000), m.headers)


def header(headers: Any, name: str) -> bytes | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        if k == name:
            return v if isinstance(v, bytes) else str(v).encode()
    return None


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key: murmur2, as the Java client, aiokafka, kafka-python
    and Faust compute it (librdkafka clients, confluent-kafka among them, only with `partitioner=murmur2_random`;
    their default hashes with CRC32). A user's events, requests and history are co-partitioned by it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PoisonError(RuntimeError):
    """A record that failed `max_attempts` times: dead-lettered with reason `poison`."""


class ModelLostError(RuntimeError):
    """The model fails every request, a cold probe included: no request is to blame; the worker stops."""


# ------------------------------------------------------------------------------------------------ shared


class _Handler:
    def __init__(self, settings: StreamSettings, output: Output, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.output = output
        self.metrics = metrics
        self._max_ahead_ms = int(settings.max_ahead_s * 1000)

    async def dead_letter(self, rec: Record, reason: str, text: str, value: bytes | None = None) -> Awaitable[Any]:
        """Send the record's dead letter (the record whole, for a redrive); the result resolves when confirmed."""
        dl = dead_letter(
            source_topic=rec.topic, partition=rec.partition, offset=rec.offset, key=rec.key,
            value=rec.value if value is None else value, reason=reason, error=text, headers=rec.headers,
            timestamp_ms=rec.timestamp_ms,
        )
        self.metrics.dead_letters.labels(source_topic=rec.topic).inc()
        self.metrics.rejected.labels(source_topic=rec.topic, reason=reason).inc()
        return await self.output.send(self.settings.deadletter_topic, rec.key, encode(dl))

    async def reject(self, rec: Record, error: BaseException) -> None:
        reason, text = rejection(error, rec.value)
        await (await self.dead_letter(rec, reason, text))

    def partition_of(self, key: bytes) -> int:
        return partition_for(key, self.settings.partitions)

    def misrouted(self, rec: Record, key: bytes) -> str | None:
        """Why the record cannot be processed where it is: "rekeyed" (its key is not the user id) or "rerouted"
        (it sits on a partition other than its key's), else None. Either way it is re-published, keyed by the
        user id, to the partition that holds the user's history and serves the user's requests."""
        if rec.key != key:
            return "rekeyed"
        if rec.partition != self.partition_of(key):
            return "rerouted"
        return None

    async def forward(self, rec: Record, key: bytes) -> None:
        """Re-publish the record under the user id on its key's partition, confirmed before the source is acked."""
        await (await self.output.send(rec.topic, key, rec.value or b"", rec.timestamp_ms, rec.headers,
                                      self.partition_of(key)))
        self.metrics.rerouted.labels(topic=rec.topic).inc()


# ------------------------------------------------------------------------------------------------ ingest


class IngestHandler(_Handler):
    """An event → its user's history (idempotent on `event_id`); a query event also becomes a search request."""

    def __init__(self, settings: StreamSettings, store: HistoryStore, output: Output, metrics: WorkerMetrics,
                 codec: history_codec.HistoryCodec | None = None) -> None:
        super().__init__(settings, output, metrics)
        self.store = store
        self.codec = codec or history_codec.HistoryCodec(settings.history_len, settings.dedup_ids)
        # Label lookups cost a dict walk and a lock per event on the hot path: resolve them once.
        self._n = {o: metrics.events.labels(outcome=o)
                   for o in ("appended", "duplicate", "query", "rekeyed", "rerouted", "dead_letter")}

    async def handle(self, rec: Record) -> str:
        """Process one event; returns its outcome (a metrics label)."""
        outcome = await self._handle(rec)
        self._n[outcome].inc()
        return outcome

    async def _handle(self, rec: Record) -> str:
        try:
            ev: Event = decode(Event, rec.value)
            check_not_ahead(ev.ts, self._max_ahead_ms)
            action = None if ev.type is EventType.QUERY else int(action_from_event(ev.type.value, ev.value))
        except ValueError as exc:
            await self.reject(rec, exc)
            return "dead_letter"
        key = ev.user_id.encode("utf-8")
        moved = self.misrouted(rec, key)
        if moved is not None:
            # Co-partitioning needs the user id as key, on its murmur2 partition: re-publish it there instead
            # of writing state into a partition whose requests are served elsewhere.
            await self.forward(rec, key)
            return moved
        current = self.store.get(key)
        try:
            if ev.type is EventType.QUERY:
                new = await self._on_query(rec, ev, key, current)
                outcome = "query"
            else:
                assert action is not None and ev.item_id is not None
                # append() recognises a redelivered event_id itself (None: nothing to write).
                new = self.codec.append(current, event_id=ev.event_id, item_id=ev.item_id, action=action, ts_ms=ev.ts)
                outcome = "appended"
        except history_codec.CorruptHistoryError as exc:
            # Never block a user forever on an unreadable value: log it and start the history afresh.
            log.error("user %r: unreadable history (%s); starting it afresh", ev.user_id, exc)
            self.store.set(key, history_codec.encode(history_codec.RawHistory()))
            return await self._handle(rec)
        if new is None:
            return "duplicate"
        self.store.set(key, new)
        return outcome

    async def _on_query(self, rec: Record, ev: Event, key: bytes, current: bytes | None) -> bytes | None:
        if self.codec.seen(current, ev.event_id):
            return None
        s = self.settings
        if s.queries_as_requests:
            req = RecRequest(request_id=ev.event_id, user_id=ev.user_id, ts=ev.ts, k=s.query_k, query=ev.query,
                             exclude_seen=s.query_exclude_seen)
            # Confirmed before the event id is recorded: a crash in between re-forwards (a duplicate
            # result with the same request_id), never drops the search.
            await (await self.output.send(s.requests_topic, key, encode(req), rec.timestamp_ms,
                                          [(SOURCE_HEADER, b"query")], self.partition_of(key)))
        return self.codec.append(current, event_id=ev.event_id, item_id=None, action=0, ts_ms=ev.ts)


# ------------------------------------------------------------------------------------------------ infer


@dataclass
class Pending:
    """A request accepted for inference, with what its result (or dead letter) needs."""

    request: RecRequest
    source: str  # "request" | "query"
    history: bytes | None  # the user's history when the request was received
    record: Record
    key: bytes
    finish: Callable[..., Awaitable[None]] | None = None  # its ack slot (set by the agent)
    attempts: int = 0  # inference calls this request took part in that failed as a whole
    received: float = field(default_factory=time.perf_counter)


class RequestHandler(_Handler):
    """Requests → micro-batched inference → one confirmed result or dead letter per request."""

    def __init__(self, settings: StreamSettings, store: HistoryStore, output: Output, metrics: WorkerMetrics,
                 *, max_attempts: int | None = None, call_timeout_s: float | None = None,
                 replies: Replies | None = None) -> None:
        super().__init__(settings, output, metrics)
        self.store = store
        # None: a request's reply_to is ignored (its result goes to the results topic only, as always).
        self.replies = replies
        self.max_attempts = max_attempts or settings.max_attempts
        # A backstop only: the runner bounds each call itself (InferenceTimeout, after killing the child).
        # Past this the runner is in an unknown state, so it is fatal, never a request's fault.
        self.call_timeout_s = call_timeout_s or 2 * settings.inference_timeout_s + 30.0

    async def accept(self, rec: Record) -> Pending | None:
        """A valid request of the right key → a `Pending`; otherwise its dead letter or forward is confirmed
        before this returns (None: nothing to batch)."""
        try:
            req: RecRequest = decode(RecRequest, rec.value)
            check_not_ahead(req.ts, self._max_ahead_ms)
        except ValueError as exc:
            await self.reject(rec, exc)
            return None
        key = req.user_id.encode("utf-8")
        if self.misrouted(rec, key) is not None:
            await self.forward(rec, key)
            return None
        source = "query" if header(rec.headers, SOURCE_HEADER) == b"query" else "request"
        self.metrics.requests.labels(source=source).inc()
        # Read here, in the request's own partition context (the table is co-partitioned with it).
        return Pending(req, source, self.store.get(key), rec, key)

    async def serve(self, batch: list[Pending], runner: Runner) -> None:
        """Infer the batch and send one result or dead letter per request; returns once all are confirmed."""
        s = self.settings
        outcomes = await self.infer(batch, runner)
        version = runner.last_version
        sends: list[Awaitable[Any]] = []
        latencies: list[float] = []
        for p, out in zip(batch, outcomes, strict=True):
            if isinstance(out, Exception):
                sends.append(await self._failed(p, out))
                continue
            now_ms = time.time() * 1000.0
            try:
                value = encode(self._result(p, out, version, max(0.0, now_ms - p.record.timestamp_ms)))
            except Exception as exc:  # a list no result can be built from (a NaN score, a bad id): this request only
                log.exception("request %s: no result could be built", p.request.request_id)
                sends.append(await self._failed(p, exc))
                continue
            sends.append(await self.output.send(s.results_topic, p.key, value))
            if p.request.reply_to is not None and self.replies is not None:
                self.replies.offer(p.request.reply_to, p.key, value)  # a copy, off the commit path
            latencies.append(max(0.0, now_ms - p.record.timestamp_ms) / 1000.0)
        await asyncio.gather(*sends)
        self.metrics.results.inc(len(latencies))
        for sec in latencies:
            self.metrics.e2e_seconds.observe(sec)

    async def _failed(self, p: Pending, exc: BaseException) -> Awaitable[Any]:
        self.metrics.failed_requests.inc()
        reason = "poison" if isinstance(exc, PoisonError) else "inference"
        value = p.record.value if p.record.value is not None else encode(p.request)
        return await self.dead_letter(p.record, reason, f"{type(exc).__name__}: {exc}", value=value)

    def _result(self, p: Pending, ranked: list[Any], version: str, latency_ms: float) -> RecResult:
        return RecResult(
            request_id=p.request.request_id,
            user_id=p.request.user_id,
            query=p.request.query,
            model_version=version,
            items=[ScoredItem(item_id=r.item_id, rank=r.rank, score=float(r.score),
                              retrieval_score=float(r.retrieval_score)) for r in ranked],
            latency_ms=latency_ms,
            worker=self.settings.worker_id,
        )

    # -------------------------------------------------------------- inference with attempts

    async def infer(self, batch: list[Pending], runner: Runner) -> list[Any]:
        """One outcome per request: a ranked list, the model's error for it, or a `PoisonError`.

        A call the runner failed as a whole (`InferenceError`: the child hung or died and was restarted) counts
        one attempt for every request in it; the batch is then served one request at a time, so that one
        poisonous request fails alone, and a request reaching `max_attempts` failed calls is given up.
        """
        try:
            outcomes = await self._call(runner, batch)
        except InferenceError as exc:
            log.warning("inference of a batch of %d failed (%s); serving its requests one at a time", len(batch), exc)
            for p in batch:
                p.attempts += 1
            return [await self._alone(runner, p, exc) for p in batch]
        out: list[Any] = []
        for p, o in zip(batch, outcomes, strict=True):
            if isinstance(o, InferenceError):  # the runner's own one-by-one retry lost the model on this one
                p.attempts += 1
                o = await self._alone(runner, p, o)
            out.append(o)
        return out

    async def _alone(self, runner: Runner, p: Pending, exc: BaseException) -> Any:
        while p.attempts < self.max_attempts:
            try:
                (o,) = await self._call(runner, [p])
            except InferenceError as again:
                p.attempts += 1
                exc = again
                continue
            if isinstance(o, InferenceError):
                p.attempts += 1
                exc = o
                continue
            return o
        if not await self._serves_others(runner, p):
            # The model fails a request that holds nothing at all as well: the model is lost (a checkpoint that
            # cannot be loaded any more, a child that cannot restart), not this request. Dead-lettering would
            # empty the topic into the dead letters; the worker stops instead and the request is redelivered.
            raise ModelLostError(f"the model fails a cold probe too (last error: {type(exc).__name__}: {exc})")
        log.error("request %s failed %d inference calls (last: %s); dead-lettering it as poison",
                  p.request.request_id, p.attempts, exc)
        return PoisonError(f"{p.attempts} failed inference calls, the last: {type(exc).__name__}: {exc}")

    async def _serves_others(self, runner: Runner, p: Pending) -> bool:
        """Whether the model still serves a request other than `p`: a cold user without a query, at p's time."""
        probe = RecRequest(request_id="genrec-poison-probe", user_id="genrec-poison-probe", ts=p.request.ts, k=1,
                           exclude_seen=False)
        try:
            outcomes, _ = await asyncio.wait_for(runner.infer([InferenceInput(probe, None)]), self.call_timeout_s)
        except InferenceError as exc:
            log.error("the cold probe failed as well: %s", exc)
            return False
        return not isinstance(outcomes[0], Exception)

    async def _call(self, runner: Runner, batch: list[Pending]) -> list[Any]:
        outcomes, seconds = await asyncio.wait_for(
            runner.infer([InferenceInput(p.request, p.history) for p in batch]), self.call_timeout_s
        )
        self.metrics.batch_size.observe(len(batch))
        self.metrics.inference_seconds.observe(seconds)
        return list(outcomes)


# ------------------------------------------------------------------------------------------------ attempts


class Attempts:
    """Failed attempts per record (topic, partition, offset); a record failing `max_attempts` times is poison.

    `run(handle, record, on_poison)` retries the handler at once: a handler that raises for one record (a bug
    meeting odd input) would otherwise stop the worker, whose restart meets the same record again, forever.
    A send failure is not the record's fault and is never counted: it propagates and fails the task. Counts
    live in this process only (bounded): a record that kills the process itself is the inference child's
    case, counted by the request handler.
    """

    def __init__(self, max_attempts: int, *, capacity: int = 10_000) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be ≥ 1")
        self.max_attempts = max_attempts
        self._failed: OrderedDict[tuple[str, int, int], int] = OrderedDict()
        self._capacity = capacity

    def failures(self, rec: Record) -> int:
        return self._failed.get(rec.id, 0)

    async def run(self, handle: Callable[[Record], Awaitable[Any]], rec: Record,
                  on_poison: Callable[[Record, BaseException], Awaitable[None]]) -> Any:
        while True:
            try:
                out = await handle(rec)
            except SEND_FAILURES:
                raise
            except Exception as exc:
                n = self._count(rec)
                log.exception("%s[%d]@%d failed (attempt %d of %d)", rec.topic, rec.partition, rec.offset, n,
                              self.max_attempts)
                if n >= self.max_attempts:
                    self._failed.pop(rec.id, None)
                    await on_poison(rec, exc)
                    return None
                continue
            self._failed.pop(rec.id, None)
            return out

    def _count(self, rec: Record) -> int:
        n = self._failed.pop(rec.id, 0) + 1
        self._failed[rec.id] = n
        while len(self._failed) > self._capacity:
            self._failed.popitem(last=False)
        return n


async def dead_letter_poison(handler: _Handler, rec: Record, exc: BaseException) -> None:
    """The dead letter of a record that failed every attempt, confirmed before the record is acked."""
    await (await handler.dead_letter(rec, "poison", f"{type(exc).__name__}: {exc}"))


# ------------------------------------------------------------------------------------------------ liveness


class Liveness:
    """Work in flight and since when, for /health: a worker whose work runs past `stuck_after_s` is stuck.

    A liveness probe must tell a worker that is merely slow from one that will never finish (a batch waiting
    on a runner that lost its child without noticing, an ack never released): the process is up and its web
    page answers, yet nothing moves, and only a restart helps.
    """

    def __init__(self, stuck_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._running: dict[int, tuple[str, float]] = {}
        self._next = 0

    def begin(self, what: str) -> int:
        self._next += 1
        self._running[self._next] = (what, self._clock())
        return self._next

    def end(self, token: int) -> None:
        self._running.pop(token, None)

    def stuck(self) -> dict[str, float]:
        """Work running longer than `stuck_after_s`: its name → seconds so far (the oldest of each name)."""
        now = self._clock()
        out: dict[str, float] = {}
        for what, since in self._running.values():
            age = now - since
            if age > self.stuck_after_s:
                out[what] = max(out.get(what, 0.0), round(age, 1))
        return out
