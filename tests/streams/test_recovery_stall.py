"""A table restore whose changelog records the Kafka client took but never handed on (issue 6).

The scale-out test once hung this way: a survivor's recovery waited forever for changelog records that the
broker served (RELIABILITY.md). Here a real `genrec worker` is made to lose a range of restored records
on purpose (tests/streams/inject/sitecustomize.py), on an empty state directory, with the value of the probe
user among them. The recovery watch (streams/recovery_watch.py) must notice the stall, seek back, and the
worker must turn ready with every record restored: the probe's request is answered with the very list
the same model gives for the value written last. Without the watch's seek the worker never becomes ready
(checked by hand with GENREC_RECOVERY_STALL_S=100000: still 503 after 120 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from ops.bench_stream import scrape
from ops.cluster import LocalCluster
from ops.topics import COMPACT, TopicSpec, create_topics
from schemas.messages import RecRequest, RecResult, encode
from streams import history_codec
from tests.streams.conftest import FAST_GROUP_ENV, Topics, produce, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

N_USERS = 1_500
LOST = 120  # records before the probe's, and the probe's own, that recovery never gets the first time
STALL_S = 3.0
NOW = int(time.time() * 1000) - 3_600_000
INJECT = Path(__file__).parent / "inject"


def _write_changelog(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """One record per produce batch (design.md §6); the (partition, offset) of the last record."""
    from ops.kafka_clients import make_producer

    async def main() -> tuple[int, int]:
        p = make_producer(bootstrap, one_record_batches=True, linger_ms=0)
        await p.start()
        try:
            futs = [await p.send(topic, key=k, value=v) for k, v in records]
            meta = await asyncio.gather(*futs)
        finally:
            await p.stop()
        return meta[-1].partition, meta[-1].offset

    return asyncio.run(main())


def test_a_restore_that_lost_records_is_noticed_sought_back_and_completed(
    bootstrap: str, checkpoint: Path, tmp_path: Path
) -> None:
    partitions = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
    topics = Topics.unique()
    app_id = f"genrec-stall-{uuid.uuid4().hex[:8]}"
    changelog = f"{app_id}-user_history-changelog"
    specs = [TopicSpec(t, partitions) for t in (topics.events, topics.requests, topics.results, topics.deadletter)]
    asyncio.run(create_topics(bootstrap, [*specs, TopicSpec(changelog, partitions, configs=COMPACT)]))

    codec = history_codec.HistoryCodec(200, 64)
    records = []
    for i in range(N_USERS):
        h = codec.append(None, event_id=f"e{i}", item_id=str(1 + i % 300), action=1, ts_ms=NOW)
        assert h is not None
        records.append((f"bulk{i}".encode(), h))
    probe: bytes | None = None
    for j, item in enumerate(["5", "17", "42", "99", "123"]):
        probe = codec.append(probe, event_id=f"p{j}", item_id=item, action=1, ts_ms=NOW + 1000 * j)
    assert probe is not None
    records.append((b"probe", probe))
    partition, offset = _write_changelog(bootstrap, changelog, records)
    assert offset >= LOST, "too few records on the probe's partition to lose a range before it"

    env = {
        **FAST_GROUP_ENV,
        **topics.env(),
        "GENREC_RECOVERY_STALL_S": str(STALL_S),
        "GENREC_TEST_LOSE_RESTORE": f"{partition}:{offset - LOST + 1}:{LOST}",
        "PYTHONPATH": str(INJECT),
    }
    cluster = LocalCluster(bootstrap, checkpoint, tmp_path, app_id, env)
    try:
        rep = cluster.start("r1")
        t0 = time.monotonic()
        while True:
            assert rep.alive, f"worker exited with {rep.proc.returncode}\n{cluster.log_tail()}"
            got = rep.ready_state(timeout_s=1.0)
            if got is not None and got[0] == 200:
                break
            assert time.monotonic() - t0 < 120, f"never ready: {got}\n{cluster.log_tail()}"
            time.sleep(0.2)

        log = cluster.log_path.read_text(errors="replace")
        lost = [ln for ln in log.splitlines() if ln.startswith("inject: lost changelog record")]
        assert len(lost) == LOST, f"the fault was not injected as asked: {lost[:3]}\n{cluster.log_tail()}"
        assert f"recovery of {changelog}[{partition}] made no progress" in log
        assert scrape(rep.port).get("genrec_recovery_stalls_total", 0.0) >= 1

        req = RecRequest(request_id="probe-1", user_id="probe", ts=NOW + 60_000, k=10, exclude_seen=True)
        produce(bootstrap, [(topics.requests, b"probe", encode(req))])
        recs = read_until(bootstrap, topics.results, lambda r: any(v["request_id"] == "probe-1" for v in values(r)), 60)
        (result,) = [RecResult.model_validate(v) for v in values(recs) if v["request_id"] == "probe-1"]
    finally:
        cluster.stop_all()

    from streams.serving import InferenceInput, InferenceRunner, load_recommender

    runner = InferenceRunner(load_recommender(checkpoint), torch_threads=1)
    try:
        (expected,) = runner.infer_sync([InferenceInput(req, probe)])
    finally:
        runner.close()
    assert [i.item_id for i in result.items] == [r.item_id for r in expected]  # restored, not an empty history
