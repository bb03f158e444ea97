"""Records routed by key, whoever produced them (issue 19 item 8), against a real `genrec worker`.

An upstream app produced each user's clicks with confluent-kafka, whose librdkafka default partitioner hashes
keys with CRC32; requests came from a murmur2 client (aiokafka, Java, Faust). The worker served a request from
the history on the request's partition, so a user whose clicks sat on another partition was served as cold (4
of 12 results returned items the user had just clicked). Now a record on a partition other than murmur2(key)
mod N is re-published to that partition before it is processed, so the history is where the requests are.
"""

from __future__ import annotations

import time
import uuid

import pytest
from genrec.schemas.messages import Event, RecRequest, RecResult, encode
from genrec.streams import history_codec
from genrec.streams.handlers import partition_for

from tests.streams.conftest import FAST_GROUP_ENV, WorkerHandle, produce, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

confluent_kafka = pytest.importorskip("confluent_kafka")

N = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
NOW = int(time.time() * 1000) - 3_600_000
USERS = [f"user-{i}" for i in range(12)]
CLICKS = 4


def _crc32_partitions(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """Produce with confluent-kafka's default partitioner (librdkafka: CRC32 of the key); the partition each
    key landed on, as the broker confirmed it."""
    landed: dict[bytes, int] = {}
    errors: list[str] = []

    def on_delivery(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            errors.append(str(err))
        else:
            landed[msg.key()] = msg.partition()

    # One record per request and batch (the embedded broker's end offsets are wrong otherwise, design notes
    # in streams/settings.py); no partitioner setting: the library's default is what is tested.
    p = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1,
                                  "acks": "all", "enable.idempotence": False})
    for key, value in records:
        p.produce(topic, key=key, value=value, on_delivery=on_delivery)
        p.flush(30)
    assert not errors, errors
    return landed


def test_clicks_from_a_crc32_producer_reach_the_history_requests_read(worker_factory) -> None:
    w: WorkerHandle = worker_factory()
    w.start()
    # The clicks: the top of what a cold user is offered, so that a user served as cold (its history on
    # another partition) would be offered the very items it clicked.
    probe = RecRequest(request_id="probe", user_id="cold-probe", ts=NOW, k=CLICKS)
    produce(w.bootstrap, [(w.topics.requests, b"cold-probe", encode(probe))])
    got = read_until(w.bootstrap, w.topics.results, lambda r: len(r) >= 1, 60)
    top = [i.item_id for i in RecResult.model_validate(values(got)[0]).items]
    assert len(top) == CLICKS, w.log_tail()
    clicks: dict[str, list[str]] = {u: top[i % CLICKS:] + top[:i % CLICKS] for i, u in enumerate(USERS)}
    records = []
    for j in range(CLICKS):
        for u in USERS:
            ev = Event(event_id=f"{u}-{j}-{uuid.uuid4().hex[:6]}", user_id=u, ts=NOW + 1000 * j, type="click",
                       item_id=clicks[u][j])
            records.append((u.encode(), encode(ev)))
    landed = _crc32_partitions(w.bootstrap, w.topics.events, records)
    moved = [u for u in USERS if landed[u.encode()] != partition_for(u.encode(), N)]
    assert len(moved) >= 3, f"the test data must put some users on a partition murmur2 does not give: {landed}"

    # Every click reaches its user's history, on the murmur2 partition (where the user's requests are served).
    want = {u: clicks[u] for u in USERS}
    t_end = time.monotonic() + 90
    while True:
        hist = _changelog(w)
        if all(u in hist and hist[u][1].item_ids == want[u] for u in USERS) or time.monotonic() > t_end:
            break
    for u in USERS:
        assert u in hist and hist[u][1].item_ids == want[u], f"{u}: {hist.get(u)}\n{w.log_tail()}"
        assert hist[u][0] == partition_for(u.encode(), N), f"{u}'s history is on partition {hist[u][0]}"

    # Requests from a murmur2 client: no result offers an item its user just clicked.
    reqs = [(w.topics.requests, u.encode(), encode(RecRequest(request_id=f"r-{u}", user_id=u, ts=NOW + 60_000, k=10,
                                                              exclude_seen=True))) for u in USERS]
    produce(w.bootstrap, reqs)
    got = read_until(w.bootstrap, w.topics.results,
                     lambda r: len({v["request_id"] for v in values(r)}) >= len(USERS) + 1, 60)
    results = {v["request_id"]: RecResult.model_validate(v) for v in values(got) if v["request_id"] != "probe"}
    assert set(results) == {f"r-{u}" for u in USERS}, w.log_tail()
    for u in USERS:
        offered = {i.item_id for i in results[f"r-{u}"].items}
        assert not offered & set(clicks[u]), f"{u} was offered items it had clicked: {offered & set(clicks[u])}"
    assert w.counter("genrec_events_total", outcome="rerouted") >= len(moved) * CLICKS


def _changelog(w: WorkerHandle) -> dict[str, tuple[int, history_codec.RawHistory]]:
    """Each user's latest history value in the changelog, with the partition it was written to."""
    latest: dict[str, tuple[int, history_codec.RawHistory]] = {}
    for r in read_until(w.bootstrap, f"{w.app_id}-user_history-changelog", lambda r: False, timeout_s=2.0):
        latest[r.key.decode()] = (r.partition, history_codec.decode(r.value))
    return latest
