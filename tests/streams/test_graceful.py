"""SIGTERM in the middle of a backlog (issue 6): the worker finishes what it took, commits exactly that, leaves.

A backlog of requests keeps batches in flight; SIGTERM arrives while it drains. Read back from the broker
afterwards: exit status 0; every request below the committed offset has a result (nothing acknowledged
without an answer) and every answered request lies below it (nothing answered left uncommitted, so the
next owner does not answer it again). A restarted worker then answers the rest: every request exactly once.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from genrec.ops.chaos import committed_offsets
from genrec.schemas.messages import Event, RecRequest, encode
from genrec.streams import history_codec
from genrec.streams.handlers import partition_for

from tests.streams.conftest import FAST_GROUP_ENV, WorkerHandle, produce, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

N = 1500
NOW = int(time.time() * 1000) - 3_600_000


def _send_backlog(bootstrap: str, topic: str) -> dict[str, tuple[int, int]]:
    """request_id → (partition, offset) of N requests for 60 users, sent as fast as the producer goes."""
    from genrec.ops.kafka_clients import make_producer

    async def main() -> dict[str, tuple[int, int]]:
        p = make_producer(bootstrap, one_record_batches=False, linger_ms=5)
        await p.start()
        try:
            futs = {}
            for i in range(N):
                user = f"g{i % 60}"
                req = RecRequest(request_id=f"bk-{i}", user_id=user, ts=NOW, k=5)
                futs[req.request_id] = await p.send(topic, key=user.encode(), value=encode(req))
            await asyncio.gather(*futs.values())
            return {rid: (f.result().partition, f.result().offset) for rid, f in futs.items()}
        finally:
            await p.stop()

    return asyncio.run(main())


def test_sigterm_mid_backlog_finishes_in_flight_commits_it_and_leaves(worker_factory) -> None:
    w: WorkerHandle = worker_factory()
    w.start()
    t = w.topics
    where = _send_backlog(w.bootstrap, t.requests)
    # Mid-drain: some answered, most still queued in the topic or in the worker's batcher.
    w.wait_counter("genrec_results_total", 200, timeout_s=120)
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0, w.log_tail()

    committed = committed_offsets(w.bootstrap, w.app_id, t.requests, int(FAST_GROUP_ENV["GENREC_PARTITIONS"]))
    answered = {v["request_id"] for v in values(read_until(w.bootstrap, t.results, lambda r: False, 5.0))}
    below = {rid for rid, (p, off) in where.items() if off < committed.get(p, 0)}
    assert 200 <= len(below) < N, f"SIGTERM did not land mid-backlog: {len(below)} of {N} committed"
    assert below - answered == set(), f"acknowledged without a result: {sorted(below - answered)[:10]}"
    assert answered - below == set(), f"answered but left uncommitted: {sorted(answered - below)[:10]}"

    w.start(state_dir=w.base / "state1")
    recs = read_until(w.bootstrap, t.results, lambda r: len(r) >= N, timeout_s=180)
    time.sleep(1.0)  # a second answer for anything would be on the topic by now
    recs = read_until(w.bootstrap, t.results, lambda r: len(r) > N, timeout_s=3.0)
    ids = [v["request_id"] for v in values(recs)]
    assert set(ids) == set(where), f"{len(set(where) - set(ids))} never answered\n{w.log_tail()}"
    assert len(ids) == N, f"{len(ids) - N} answered twice"


def test_sigterm_with_a_held_run_writes_it_acks_it_and_leaves(worker_factory) -> None:
    """History writes are held per user until the next offset commit (streams/app.py, TableStore), their events
    unacked. A stop waits for every fetched message to be acked; with commits far apart, only the flush before
    that wait (GenrecFaustApp.finish_held_work) lets the worker leave, the history written."""
    w: WorkerHandle = worker_factory()
    w.extra_env = {"GENREC_COMMIT_INTERVAL_S": "60"}
    w.start()
    events = [Event(event_id=f"held-{i}", user_id="held-user", ts=NOW + i, type="click", item_id=str(1 + i))
              for i in range(3)]
    produce(w.bootstrap, [(w.topics.events, b"held-user", encode(e)) for e in events])
    w.wait_counter("genrec_events_total", 3, outcome="appended")
    assert w.counter("genrec_history_writes_total") == 0  # held: the next commit is a minute away
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0, w.log_tail()
    changelog = f"{w.app_id}-user_history-changelog"
    records = [r for r in read_until(w.bootstrap, changelog, lambda rs: len(rs) >= 1, 10.0) if r.key == b"held-user"]
    assert [history_codec.decode(r.value).item_ids for r in records] == [["1", "2", "3"]]


def test_each_commit_writes_the_held_run_and_covers_its_events(worker_factory) -> None:
    """No timer: the periodic commit itself writes the held histories, then commits the events' offsets."""
    w: WorkerHandle = worker_factory()
    w.extra_env = {"GENREC_COMMIT_INTERVAL_S": "2"}
    w.start()
    events = [Event(event_id=f"run-{i}", user_id="run-user", ts=NOW + i, type="click", item_id=str(1 + i))
              for i in range(3)]
    produce(w.bootstrap, [(w.topics.events, b"run-user", encode(e)) for e in events])  # offsets 0, 1, 2 of a new topic
    w.wait_counter("genrec_events_total", 3, outcome="appended")
    w.wait_counter("genrec_history_writes_total", 1, timeout_s=10)
    assert w.counter("genrec_history_writes_total") == 1  # the three events in one write
    partitions = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
    partition = partition_for(b"run-user", partitions)
    deadline = time.monotonic() + 10
    while committed_offsets(w.bootstrap, w.app_id, w.topics.events, partitions).get(partition) != 3:
        assert time.monotonic() < deadline, "the events written were not committed by the next commit"
        time.sleep(0.5)
