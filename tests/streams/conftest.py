"""Fixtures for the worker's integration tests: a tiny real checkpoint, `genrec worker` child processes
(each test run gets its own app id and topic names on the shared session broker), and topic readers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ops.bench_stream import genrec_command, scrape, start_worker, stop_process, wait_ready

# Fast group membership on the embedded broker (design.md §6b): a dead member is noticed in ~4 s.
FAST_GROUP_ENV = {
    "GENREC_SESSION_TIMEOUT_S": "4",
    "GENREC_HEARTBEAT_INTERVAL_S": "0.5",
    "GENREC_REBALANCE_TIMEOUT_S": "8",
    "GENREC_COMMIT_INTERVAL_S": "0.5",
    "GENREC_PARTITIONS": "3",
    "GENREC_MAX_WAIT_MS": "5",
    "GENREC_TORCH_THREADS": "1",
}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: `genrec train` on the generated data set for one epoch (~30 s on 2 cores).

    GENREC_TEST_CHECKPOINT points at an existing one instead (to iterate on the tests faster).
    """
    given = os.environ.get("GENREC_TEST_CHECKPOINT")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("ckpt") / "synthetic"
    subprocess.run(
        [*genrec_command(), "train", "--dataset", "synthetic", "--out", str(out), "--epochs", "1", "--no-progress"],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return out


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

    def start(self, state_dir: Path | None = None, ready_timeout_s: float = 90.0) -> float:
        from ops.broker import free_port

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
            env={**FAST_GROUP_ENV, **self.topics.env(), "GENREC_WORKER_ID": f"w{self.starts}", **self.extra_env},
        )
        self.procs.append(proc)
        try:
            return wait_ready(self.port, proc, timeout_s=ready_timeout_s)
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.log_tail()}") from exc

    def create_topics(self) -> None:
        from ops.topics import TopicSpec, create_topics

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


@pytest.fixture
def worker_factory(
    bootstrap: str, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], WorkerHandle]]:
    made: list[WorkerHandle] = []

    def make() -> WorkerHandle:
        h = WorkerHandle(
            bootstrap=bootstrap,
            checkpoint=checkpoint,
            topics=Topics.unique(),
            app_id=f"genrec-test-{uuid.uuid4().hex[:8]}",
            base=tmp_path_factory.mktemp("worker"),
        )
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.stop_all()


# ------------------------------------------------------------------------ Kafka helpers (sync wrappers)


def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> None:
    """(topic, key, value) records, in order, each confirmed before the call returns."""
    from ops.kafka_clients import make_producer

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
    from ops.kafka_clients import make_consumer

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
