"""`genrec load`: paced requests (and query events) onto Kafka, results read back, a latency report.

Each request carries a fresh `request_id`; a query event's `event_id` is the `request_id` of the search it
triggers (README), so both are matched the same way. Latency is result received − request sent, both
on this machine's clock, for the first result of each id; later results with the same id are counted as
duplicates (at least once: a failover may answer twice, never zero times). The partition every record went
to comes from the broker's acknowledgement, so a report can be cut by partition (which replica owned it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from genrec.schemas.messages import Event, RecRequest, encode


@dataclass
class Sent:
    request_id: str
    user_id: str
    kind: str  # "request" | "query"
    sent_at: float  # time.monotonic()
    partition: int = -1


@dataclass
class Received:
    request_id: str
    worker: str
    at: float  # time.monotonic()


@dataclass
class LoadRun:
    """Everything one load run saw; `report()` summarises it."""

    sent: dict[str, Sent] = field(default_factory=dict)
    first: dict[str, Received] = field(default_factory=dict)
    duplicates: int = 0
    started: float = 0.0
    send_done: float = 0.0
    finished: float = 0.0

    def on_result(self, request_id: str, worker: str, at: float) -> None:
        if request_id not in self.sent:
            return  # another run's result on the same topic
        if request_id in self.first:
            self.duplicates += 1
        else:
            self.first[request_id] = Received(request_id, worker, at)

    def latencies_ms(self, ids: Sequence[str] | None = None) -> np.ndarray:
        keys = self.first.keys() if ids is None else [i for i in ids if i in self.first]
        return np.array([(self.first[i].at - self.sent[i].sent_at) * 1000.0 for i in keys])

    def report(self) -> dict[str, Any]:
        lat = self.latencies_ms()

        def pct(q: float) -> float | None:  # None, not NaN: the report stays strict JSON
            return round(float(np.percentile(lat, q)), 1) if len(lat) else None

        elapsed = max(self.finished - self.started, 1e-9)
        send_s = max(self.send_done - self.started, 1e-9)
        kinds = Counter(s.kind for s in self.sent.values())
        return {
            "sent": len(self.sent),
            "sent_requests": kinds.get("request", 0),
            "sent_queries": kinds.get("query", 0),
            "answered": len(self.first),
            "lost": len(self.sent) - len(self.first),
            "duplicates": self.duplicates,
            "send_rate": round(len(self.sent) / send_s, 1),
            "answered_per_s": round(len(self.first) / elapsed, 1),
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": pct(100),
            "by_worker": dict(sorted(Counter(r.worker for r in self.first.values()).items())),
        }


def make_message(
    i: int, tag: str, user_id: str, is_query: bool, k: int, queries: Sequence[str]
) -> tuple[str, str, bytes]:
    """(kind, request_id, value) of the i-th message of a run."""
    now = int(time.time() * 1000)
    if is_query:
        rid = f"load-{tag}-q{i}"
        ev = Event(event_id=rid, user_id=user_id, ts=now, type="query", query=queries[i % len(queries)])
        return "query", rid, encode(ev)
    rid = f"load-{tag}-r{i}"
    return "request", rid, encode(RecRequest(request_id=rid, user_id=user_id, ts=now, k=k))


DEFAULT_QUERIES = ("action adventure", "comedy", "drama romance", "sci-fi", "documentary", "thriller night")


async def run_load(
    bootstrap: str,
    *,
    rate: float,
    duration_s: float,
    users: int | Sequence[str],
    query_share: float = 0.0,
    k: int = 10,
    requests_topic: str = "genrec.requests",
    events_topic: str = "genrec.events",
    results_topic: str = "genrec.results",
    drain_s: float = 30.0,
    progress: bool = False,
    seed: int = 0,
    run: LoadRun | None = None,
    on_tick: Callable[[LoadRun], None] | None = None,
) -> LoadRun:
    """Send `rate` messages/s for `duration_s`, then wait up to `drain_s` for the missing results.

    `users` is a count (user ids "1".."U") or the ids themselves. A share `query_share` of the messages are
    query events (searches), the rest plain requests. `run` may be passed in to watch it while it runs.
    """
    from genrec.ops.kafka_clients import make_consumer, make_producer
    from tqdm import tqdm

    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be > 0")
    if not 0.0 <= query_share <= 1.0:
        raise ValueError("query share must lie in [0, 1]")
    user_ids = [str(u) for u in range(1, users + 1)] if isinstance(users, int) else list(users)
    if not user_ids:
        raise ValueError("no users")
    run = run or LoadRun()
    rng = np.random.default_rng(seed)
    tag = uuid.uuid4().hex[:8]
    n_total = max(1, int(rate * duration_s))

    consumer = make_consumer(bootstrap, results_topic, auto_offset_reset="latest")
    await consumer.start()
    # Only this run's results: fix the position at the end before the first message goes out.
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)
    producer = make_producer(bootstrap, one_record_batches=False, linger_ms=1, acks="all")
    await producer.start()
    stop_rx = asyncio.Event()

    async def receive() -> None:
        while not stop_rx.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        v = json.loads(m.value)
                        run.on_result(str(v["request_id"]), str(v.get("worker") or ""), now)
            if on_tick is not None:
                on_tick(run)

    def note_partition(s: Sent) -> Callable[[asyncio.Future[Any]], None]:
        def done(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                s.partition = int(fut.result().partition)

        return done

    rx = asyncio.create_task(receive())
    pending: list[asyncio.Future[Any]] = []
    run.started = time.monotonic()
    try:
        with tqdm(total=n_total, unit="msg", disable=not progress, dynamic_ncols=True, desc="load") as bar:
            for i in range(n_total):
                delay = run.started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                uid = user_ids[int(rng.integers(0, len(user_ids)))]
                is_query = bool(query_share) and float(rng.random()) < query_share
                kind, rid, value = make_message(i, tag, uid, is_query, k, DEFAULT_QUERIES)
                s = Sent(rid, uid, kind, time.monotonic())
                run.sent[rid] = s
                topic = events_topic if is_query else requests_topic
                fut = await producer.send(topic, key=uid.encode("utf-8"), value=value)
                fut.add_done_callback(note_partition(s))
                pending.append(fut)
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending.clear()
                if i % 20 == 0:
                    bar.set_postfix(answered=len(run.first), refresh=False)
                bar.update(1)
            await asyncio.gather(*pending)
        run.send_done = time.monotonic()
        deadline = time.monotonic() + drain_s
        while len(run.first) < len(run.sent) and time.monotonic() < deadline:
            if rx.done():
                rx.result()  # the reader failed: surface it
            await asyncio.sleep(0.05)
        run.finished = max((r.at for r in run.first.values()), default=time.monotonic())
    finally:
        stop_rx.set()
        rx.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rx
        await producer.stop()
        await consumer.stop()
    return run
