"""Driving real `genrec worker` processes through faults: shared by the chaos tests and `genrec bench chaos`.

Moved here from tests/streams (conftest.py and test_chaos.py) so that the soak bench kills, restarts and
checks workers exactly as the tests do, with public tools only (the `genrec` CLI, aiokafka, the changelog).

- `WorkerHandle`: one worker identity (app id, topics, log) started again and again, e.g. after a SIGKILL.
- `Replay` / `PacedProducer`: events and requests with known contents, sent at a fixed rate, each confirmed.
- `latest_histories` / `history_errors`: every user's history as the changelog holds it, compared with
  the events sent (each exactly once, in time order).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrec.ops.bench_stream import scrape, start_worker, stop_process, wait_ready
from genrec.schemas.messages import Event, RecRequest, encode
from genrec.streams import history_codec

# Fast group membership on the embedded broker (docs/architecture.md, Brokers): a dead member is noticed in ~4 s.
FAST_GROUP_ENV = {
    "GENREC_SESSION_TIMEOUT_S": "4",
    "GENREC_HEARTBEAT_INTERVAL_S": "0.5",
    "GENREC_REBALANCE_TIMEOUT_S": "8",
    "GENREC_COMMIT_INTERVAL_S": "0.5",
    "GENREC_PARTITIONS": "3",
    "GENREC_MAX_WAIT_MS": "5",
    "GENREC_TORCH_THREADS": "1",
}


@dataclass
class Topics:
    events: str
    requests: str
    results: str
    deadletter: str

    @classmethod
    def unique(cls) -> Topics:
        tag = uuid.uuid4().hex[:8]
        return cls(f"t{tag}.events", f"t{tag}.requests", f"t{tag}.results", f"t{tag}.deadletter")

    def env(self) -> dict[str, str]:
        return {
            "GENREC_EVENTS_TOPIC": self.events,
            "GENREC_REQUESTS_TOPIC": self.requests,
            "GENREC_RESULTS_TOPIC": self.results,
            "GENREC_DEADLETTER_TOPIC": self.deadletter,
        }


@dataclass
class WorkerHandle:
    bootstrap: str
    checkpoint: Path
    topics: Topics
    app_id: str
    base: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. a fault injection (tests/streams/inject)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.procs[-1]

    @property
    def log_path(self) -> Path:
        return self.base / "worker.log"

    @property
    def worker_id(self) -> str:
        """The `worker` field of the results of the latest start (GENREC_WORKER_ID)."""
        return f"w{self.starts}"

    def start(self, state_dir: Path | None = None, ready_timeout_s: float = 90.0) -> float:
        from genrec.ops.broker import free_port

        if self.starts == 0:
            self.create_topics()
        self.starts += 1
        self.port = free_port()
        proc = start_worker(
            self.bootstrap,
            self.checkpoint,
            state_dir or self.base / f"state{self.starts}",
            self.port,
            app_id=self.app_id,
            log_path=self.log_path,
            env={**FAST_GROUP_ENV, **self.topics.env(), "GENREC_WORKER_ID": self.worker_id, **self.extra_env},
        )
        self.procs.append(proc)
        try:
            return wait_ready(self.port, proc, timeout_s=ready_timeout_s)
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.log_tail()}") from exc

    def create_topics(self) -> None:
        from genrec.ops.topics import TopicSpec, create_topics

        n = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
        t = self.topics
        specs = [TopicSpec(name, n) for name in (t.events, t.requests, t.results, t.deadletter)]
        asyncio.run(create_topics(self.bootstrap, specs))

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def counter(self, name: str, **labels: str) -> float:
        lab = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return self.metrics().get(f"{name}{{{lab}}}" if lab else name, 0.0)

    def wait_counter(self, name: str, at_least: float, timeout_s: float = 30.0, **labels: str) -> float:
        t0 = time.monotonic()
        v = 0.0
        while time.monotonic() - t0 < timeout_s:
            v = self.counter(name, **labels)
            if v >= at_least:
                return v
            time.sleep(0.1)
        raise AssertionError(f"{name}{labels} = {v} < {at_least} after {timeout_s}s\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop_all(self) -> None:
        for p in self.procs:
            stop_process(p, timeout_s=20)


# ------------------------------------------------------------------------ Kafka helpers (sync wrappers)


def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """(topic, key, value) records, in order, each confirmed before the call returns."""
    from genrec.ops.kafka_clients import make_producer

    async def main() -> None:
        p = make_producer(bootstrap, one_record_batches=False, linger_ms=0)
        await p.start()
        try:
            for topic, key, value in records:
                await p.send_and_wait(topic, key=key, value=value)
        finally:
            await p.stop()

    asyncio.run(main())


def read_until(bootstrap: str, topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 30.0) -> list[Any]:
    """Every record of `topic` from the beginning, until `done(records)` or the timeout (then returns)."""
    from genrec.ops.kafka_clients import make_consumer

    async def main() -> list[Any]:
        c = make_consumer(bootstrap, topic)
        await c.start()
        out: list[Any] = []
        try:
            t_end = time.monotonic() + timeout_s
            while time.monotonic() < t_end and not done(out):
                for msgs in (await c.getmany(timeout_ms=200)).values():
                    out.extend(msgs)
        finally:
            await c.stop()
        return out

    return asyncio.run(main())


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records]


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch from a consumer that only reads them: no join, no commit)."""
    from aiokafka import TopicPartition
    from genrec.ops.kafka_clients import make_consumer

    async def main() -> dict[int, int]:
        c = make_consumer(bootstrap, group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            c.assign(tps)
            return {tp.partition: off for tp in tps if (off := await c.committed(tp)) is not None}
        finally:
            await c.stop()

    return asyncio.run(main())


# ------------------------------------------------------------------------ a replay with known contents


def _an_hour_ago_ms() -> int:
    # Well inside the worker's clock-skew bound whichever way the clocks drift.
    return int(time.time() * 1000) - 3_600_000


@dataclass
class Replay:
    """Events and requests for a set of users, each user's events strictly increasing in time."""

    topics: Topics
    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    events: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # user → [(item, ts)]
    request_ids: list[str] = field(default_factory=list)
    now_ms: int = field(default_factory=_an_hour_ago_ms)

    def add_events(self, users: list[str], per_user: int, rng: random.Random) -> None:
        for _ in range(per_user):
            for u in users:
                item = str(rng.randint(1, 300))
                ts = self.now_ms + 1000 * len(self.events.setdefault(u, []))
                self.events[u].append((item, ts))
                ev = Event(event_id=f"{u}-{uuid.uuid4().hex[:10]}", user_id=u, ts=ts, type="click", item_id=item)
                self.records.append((self.topics.events, u.encode(), encode(ev)))

    def add_requests(self, users: list[str], per_user: int) -> None:
        for i in range(per_user):
            for u in users:
                rid = f"{u}-r{i}"
                self.request_ids.append(rid)
                req = RecRequest(request_id=rid, user_id=u, ts=self.now_ms + 10_000_000, k=10)
                self.records.append((self.topics.requests, u.encode(), encode(req)))


class PacedProducer(threading.Thread):
    """Sends records in order at `rate` per second, each confirmed; survives broker outages (long timeouts)."""

    def __init__(self, bootstrap: str, records: list[tuple[str, bytes, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.records, self.rate = bootstrap, records, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by the caller, not lost in a thread
            self.error = exc

    async def _main(self) -> None:
        from genrec.ops.kafka_clients import make_producer

        p = make_producer(self.bootstrap, one_record_batches=False, linger_ms=0, request_timeout_ms=120_000)
        await p.start()
        try:
            t0 = time.monotonic()
            for i, (topic, key, value) in enumerate(self.records):
                await asyncio.sleep(max(0.0, t0 + i / self.rate - time.monotonic()))
                await p.send_and_wait(topic, key=key, value=value)
                self.sent += 1
        finally:
            await p.stop()

    def begin(self, timeout_s: float = 30.0) -> None:
        """Start, and return once the first record is confirmed: fault timing counts from the stream, not
        from the producer's connection set-up (slow on a loaded machine)."""
        self.start()
        t_end = time.monotonic() + timeout_s
        while self.sent == 0 and self.error is None and time.monotonic() < t_end:
            time.sleep(0.01)
        assert self.sent > 0, f"producer sent nothing in {timeout_s}s: {self.error!r}"

    def finish(self, timeout_s: float) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), f"producer stuck after {self.sent}/{len(self.records)} records"
        assert self.error is None, f"producer failed: {self.error!r}"


# ------------------------------------------------------------------------ checks


def latest_histories(w: WorkerHandle, quiet_s: float = 4.0) -> dict[str, history_codec.RawHistory]:
    """Each user's last changelog value, decoded: a torn or corrupted write raises here."""
    latest: dict[bytes, bytes] = {}
    for r in read_until(w.bootstrap, f"{w.app_id}-user_history-changelog", lambda r: False, timeout_s=quiet_s):
        latest[r.key] = r.value
    return {k.decode(): history_codec.decode(v) for k, v in latest.items()}


def wait_histories(w: WorkerHandle, replay: Replay, timeout_s: float) -> dict[str, history_codec.RawHistory]:
    """The histories once every user has at least as many events as were sent (or at the timeout)."""
    want = {u: len(evs) for u, evs in replay.events.items()}
    t_end = time.monotonic() + timeout_s
    while True:
        hist = latest_histories(w)
        if all(len(hist.get(u, [])) >= n for u, n in want.items()) or time.monotonic() > t_end:
            return hist


def history_errors(hist: dict[str, history_codec.RawHistory], replay: Replay) -> tuple[int, int, list[str]]:
    """(events lost, events duplicated, users whose history is not the events sent once each in time order).

    A user's events have distinct times (Replay), so an event is identified by (item, ts) within its user."""
    lost = duplicated = 0
    wrong: list[str] = []
    for u, evs in replay.events.items():
        h = hist.get(u)
        got = Counter(zip(h.item_ids, h.ts_ms.tolist(), strict=True)) if h is not None else Counter()
        sent = Counter(evs)
        lost += sum((sent - got).values())
        duplicated += sum((got - sent).values())
        if h is None or (h.item_ids, h.ts_ms.tolist()) != ([i for i, _ in evs], [t for _, t in evs]):
            wrong.append(u)
    return lost, duplicated, wrong


# What a worker log must never hold after a kill and restart (every start of a handle appends to its log).
LOG_PROBLEMS = ("ConsistencyError", "unreadable history", "CorruptHistoryError", "crashing the worker")


def log_problems(w: WorkerHandle) -> list[str]:
    log = w.log_path.read_text(errors="replace") if w.log_path.exists() else ""
    return [bad for bad in LOG_PROBLEMS if bad in log]
