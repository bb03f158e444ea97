"""Crash safety under fault injection (issue 7), against real `genrec worker` processes.

- SIGKILL at random moments during a paced replay (3 kills, each followed by a restart, on the same
  state directory or on an empty one): every request gets a result (duplicates allowed, identical items
  for the same model version), every event is in its user's history exactly once, every table value
  decodes, and no restart crash-loops.
- The broker frozen (SIGSTOP) for ~20 s mid-stream, then thawed: the same worker process waits,
  reconnects and resumes; nothing is lost. A dedicated broker: the session one is shared.

The random moments come from GENREC_CHAOS_SEED (printed on failure) so a failing run can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from genrec.ops.bench_stream import wait_ready
from genrec.ops.chaos import (
    PacedProducer,
    Replay,
    Topics,
    WorkerHandle,
    log_problems,
    read_until,
    values,
    wait_histories,
)
from genrec.schemas.messages import RecResult
from genrec.streams import history_codec

from tests.conftest import both_brokers_full, new_embedded_broker, new_kafka_broker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("GENREC_CHAOS_SEED", str(int(time.time()) % 100_000)))
# Users and send rates grow with the scale, replay durations stay (RELIABILITY.md runs it at a larger scale).
SCALE = int(os.environ.get("GENREC_CHAOS_SCALE", "1"))


def _check_exactly_once(hist: dict[str, history_codec.RawHistory], replay: Replay, w: WorkerHandle) -> None:
    for u, evs in replay.events.items():
        h = hist.get(u)
        assert h is not None, f"user {u} has no history\n{w.log_tail()}"
        assert (h.item_ids, h.ts_ms.tolist()) == ([i for i, _ in evs], [t for _, t in evs]), (
            f"user {u}: history differs from the events sent once each (seed {SEED})\n{w.log_tail()}"
        )


def _check_results(w: WorkerHandle, replay: Replay, timeout_s: float, same_lists: bool = True) -> Counter[str]:
    want = set(replay.request_ids)

    def done(recs: list) -> bool:
        return want <= {v["request_id"] for v in values(recs)}

    results = [RecResult.model_validate(v) for v in values(read_until(w.bootstrap, w.topics.results, done, timeout_s))]
    got = Counter(r.request_id for r in results)
    missing = want - set(got)
    assert not missing, f"{len(missing)} requests never answered (seed {SEED}): {sorted(missing)[:10]}\n{w.log_tail()}"
    assert all(len(r.items) == 10 for r in results)
    if same_lists:
        lists: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        for r in results:
            lists.setdefault((r.request_id, r.model_version), set()).add(tuple(i.item_id for i in r.items))
        differing = {k: v for k, v in lists.items() if len(v) > 1}
        assert not differing, f"duplicate results differ for the same model version: {differing}"
    return got


def _check_log(w: WorkerHandle) -> None:
    bad = log_problems(w)
    assert not bad, f"{bad} in the worker log\n{w.log_tail()}"


@pytest.mark.timeout(480)
@both_brokers_full
def test_sigkill_at_random_moments_loses_nothing(worker_factory) -> None:
    rng = random.Random(SEED)
    w: WorkerHandle = worker_factory()
    first = w.base / "state-a"
    w.start(state_dir=first)
    replay = Replay(w.topics)
    asked = [f"user{i}" for i in range(8 * SCALE)]
    replay.add_events(asked, 8, rng)
    # Phase 1: events only, one kill. Requests wait until the histories they read are complete, so that
    # a duplicate result (a request redelivered after a kill) is computed on the same history.
    p = PacedProducer(w.bootstrap, replay.records, rate=40 * SCALE)
    p.begin()
    time.sleep(rng.uniform(0.3, 1.2))
    w.proc.send_signal(signal.SIGKILL)
    at_kill = [p.sent]
    w.proc.wait(10)
    w.start(state_dir=first)  # the same state directory: local RocksDB state plus the changelog
    p.finish(120)
    hist = wait_histories(w, replay, 90)
    _check_exactly_once(hist, replay, w)

    # Phase 2: requests for those users, and events of other users (ingest keeps writing), two kills.
    n_before = len(replay.records)
    replay.add_requests(asked, 6)
    replay.add_events([f"busy{i}" for i in range(6 * SCALE)], 6, rng)
    tail = replay.records[n_before:]
    rng.shuffle(tail)  # the busy users' events arrive out of time order too
    # Slow enough that the replay spans both kills and the restart in between.
    p = PacedProducer(w.bootstrap, tail, rate=5 * SCALE)
    p.begin()
    for state_dir in (w.base / "state-empty", first):
        time.sleep(rng.uniform(0.5, 1.5))
        w.proc.send_signal(signal.SIGKILL)
        at_kill.append(p.sent)
        w.proc.wait(10)
        w.start(state_dir=state_dir)  # an empty directory: everything from the changelog
    p.finish(120)
    got = _check_results(w, replay, 120)
    hist = wait_histories(w, replay, 90)
    _check_exactly_once(hist, replay, w)
    assert w.starts == 4
    _check_log(w)
    # The kills fell inside the replays (the last one may land after its replay, while the backlog is served).
    assert 0 < at_kill[0] < n_before and at_kill[1] < len(tail), at_kill
    print(
        f"seed {SEED}: {len(replay.request_ids)} requests, {sum(got.values())} results, "
        f"{sum(len(e) for e in replay.events.values())} events, kills after {at_kill} records of "
        f"{n_before}+{len(tail)}"
    )
    # No crash loop: the last worker stays up and ready.
    time.sleep(2)
    assert w.proc.poll() is None
    wait_ready(w.port, w.proc, timeout_s=30)


@pytest.fixture
def own_broker(broker_kind: str) -> Iterator[object]:
    """A broker of this test's own (it freezes it): Tansu, or Apache Kafka for the `[kafka]` run."""
    b = new_kafka_broker() if broker_kind == "kafka" else new_embedded_broker()
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.timeout(360)
@both_brokers_full
def test_broker_frozen_mid_stream_worker_waits_and_resumes(own_broker, checkpoint: Path, tmp_path: Path) -> None:
    from genrec.ops.broker import BrokerProcess

    broker: BrokerProcess = own_broker  # type: ignore[assignment]
    rng = random.Random(SEED)
    w = WorkerHandle(
        bootstrap=broker.bootstrap,
        checkpoint=checkpoint,
        topics=Topics.unique(),
        app_id=f"genrec-freeze-{uuid.uuid4().hex[:8]}",
        base=tmp_path,
    )
    try:
        w.start()
        pid = w.proc.pid
        replay = Replay(w.topics)
        users = [f"f{i}" for i in range(6 * SCALE)]
        replay.add_events(users, 5, rng)
        replay.add_requests(users, 3)
        replay.add_events([f"g{i}" for i in range(4 * SCALE)], 5, rng)
        p = PacedProducer(w.bootstrap, replay.records, rate=25 * SCALE)
        p.begin()
        time.sleep(1.5)
        broker.freeze()
        sent_at_freeze = p.sent
        assert 0 < sent_at_freeze < len(replay.records), "the outage must fall inside the replay"
        time.sleep(20)
        assert p.sent <= sent_at_freeze + 1, "the broker answered while frozen"
        broker.thaw()
        p.finish(120)
        # Requests and their users' events interleave here, and a rebalance after the outage may redeliver
        # a request after more events arrived: completeness only, not identical duplicates.
        got = _check_results(w, replay, 120, same_lists=False)
        hist = wait_histories(w, replay, 60)
        _check_exactly_once(hist, replay, w)
        assert w.proc.poll() is None and w.proc.pid == pid, "the worker exited during the outage"
        assert w.starts == 1
        _check_log(w)
        wait_ready(w.port, w.proc, timeout_s=60)
        print(
            f"freeze: {len(replay.request_ids)} requests, {sum(got.values())} results, outage after "
            f"{sent_at_freeze}/{len(replay.records)} records, same worker pid {pid}"
        )
    finally:
        w.stop_all()
