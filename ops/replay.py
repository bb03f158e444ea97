"""`genrec replay`: a data set → `Event`s (and `RecRequest`s) onto Kafka in time order, at a given rate.

Every user's events are merged into one global time order. By default timestamps are shifted by one
constant so that the last replayed event lands at "now" (relative times — what the model sees — are
unchanged), which makes a replay look like live traffic: latencies and the requests' clocks are today's.
`--real-times` sends the data set's own times instead (ML-100K's 1997–98, a backfill); the schemas accept
any time from 1980 on. Data sets without time (ML-1M here) get one second per event in file order,
shifted to "now" in both modes.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from genrec.model.tokens import Action
from genrec.schemas.messages import Event, EventType, RecRequest, encode

# What each action token is published as: the ingest agent maps these back to the same actions.
_EVENT_TYPE = {
    int(Action.POSITIVE): EventType.CLICK,
    int(Action.NEGATIVE): EventType.IMPRESSION,
    int(Action.PURCHASE): EventType.PURCHASE,
    int(Action.INTERACT): EventType.RATING,  # a rating without a value → the INTERACT action
}


@dataclass(frozen=True)
class ReplayItem:
    topic_kind: str  # "event" | "request"
    key: bytes
    value: bytes
    message: Event | RecRequest


def dataset_events(
    ds: Any, *, limit: int | None = None, now_ms: int | None = None, real_times: bool = False
) -> Iterator[Event]:
    """The data set's events as `Event`s, in global time order (ties: user order, then file order).

    `real_times`: keep the data set's own timestamps (a historical backfill) instead of shifting the last one
    to `now_ms`.
    """
    n_users = len(ds.user_ids)
    has_time = bool(getattr(ds, "has_time", True))
    ts_ms: list[np.ndarray] = []
    last = 0
    for u in range(n_users):
        t = np.asarray(ds.ts[u], dtype=np.int64)
        t = t * 1000 if has_time else np.arange(len(t), dtype=np.int64) * 1000
        ts_ms.append(t)
        if len(t):
            last = max(last, int(t.max()))
    shift = (now_ms if now_ms is not None else int(time.time() * 1000)) - last
    if real_times and has_time:
        shift = 0
    # heap of (ts, user, position): a k-way merge of per-user time-ordered sequences.
    heap = [(int(ts_ms[u][0]), u, 0) for u in range(n_users) if len(ts_ms[u])]
    heapq.heapify(heap)
    run = uuid.uuid4().hex[:8]
    emitted = 0
    while heap and (limit is None or emitted < limit):
        t, u, i = heapq.heappop(heap)
        if i + 1 < len(ts_ms[u]):
            heapq.heappush(heap, (int(ts_ms[u][i + 1]), u, i + 1))
        action = int(ds.actions[u][i])
        etype = _EVENT_TYPE.get(action, EventType.RATING)
        item = ds.item_ids[int(ds.items[u][i]) - 1]
        yield Event(
            event_id=f"{ds.name}-{run}-{emitted}",
            user_id=ds.user_ids[u],
            ts=t + shift,
            type=etype,
            item_id=item,
        )
        emitted += 1


def replay_items(
    events: Iterator[Event], *, requests_every: int = 0, k: int = 10, exclude_seen: bool = True
) -> Iterator[ReplayItem]:
    """Events, and after every `requests_every`-th event a request for that event's user."""
    for n, ev in enumerate(events, start=1):
        key = ev.user_id.encode("utf-8")
        yield ReplayItem("event", key, encode(ev), ev)
        if requests_every and n % requests_every == 0:
            req = RecRequest(
                request_id=f"req-{ev.event_id}", user_id=ev.user_id, ts=ev.ts, k=k, exclude_seen=exclude_seen
            )
            yield ReplayItem("request", key, encode(req), req)


class RateLimiter:
    """Paces sends to `rate` per second on average (no catch-up bursts beyond one tick)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = time.perf_counter()

    async def wait(self) -> None:
        if not self.interval:
            return
        self._next += self.interval
        delay = self._next - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            self._next = time.perf_counter()  # fell far behind: do not burst to catch up


@dataclass
class ReplayStats:
    events: int = 0
    requests: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        total = self.events + self.requests
        return {
            "events": self.events,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "messages_per_s": round(total / self.seconds, 1) if self.seconds else None,
        }


async def replay(
    producer: Any,
    items: Iterator[ReplayItem],
    *,
    events_topic: str,
    requests_topic: str,
    rate: float,
    total: int | None = None,
    progress: bool = True,
) -> ReplayStats:
    """Send `items` through a started aiokafka producer at `rate` messages/s; wait for every ack."""
    from tqdm import tqdm

    stats = ReplayStats()
    limiter = RateLimiter(rate)
    pending: list[asyncio.Future[Any]] = []
    t0 = time.perf_counter()
    with tqdm(total=total, unit="msg", disable=not progress, dynamic_ncols=True) as bar:
        for item in items:
            await limiter.wait()
            topic = events_topic if item.topic_kind == "event" else requests_topic
            pending.append(await producer.send(topic, key=item.key, value=item.value))
            if item.topic_kind == "event":
                stats.events += 1
            else:
                stats.requests += 1
            bar.update(1)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    stats.seconds = time.perf_counter() - t0
    return stats
