"""A history changelog written before a worker starts, for the tests of what a restore must bring back
(readiness, the recovery watch): many users' histories, then the probe user's, last."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

from genrec.ops.topics import COMPACT, TopicSpec, create_topics
from genrec.schemas.messages import RecRequest
from genrec.streams import history_codec

from tests.streams.conftest import FAST_GROUP_ENV, Topics

PROBE_ITEMS = ("5", "17", "42", "99", "123")


@dataclass(frozen=True)
class Prefilled:
    app_id: str
    topics: Topics
    changelog: str
    probe: bytes  # the probe user's history, the last record written
    partition: int  # where the probe's record lies
    offset: int


def prefill_history_changelog(bootstrap: str, app_prefix: str, n_users: int, now_ms: int) -> Prefilled:
    """Fresh topics and a compacted changelog of `n_users` one-event histories and the probe's five events,
    one record per produce batch: Faust's recovery trusts the broker's end offsets (docs/architecture.md, Brokers)."""
    from genrec.ops.kafka_clients import make_producer

    partitions = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
    topics = Topics.unique()
    app_id = f"{app_prefix}-{uuid.uuid4().hex[:8]}"
    changelog = f"{app_id}-user_history-changelog"
    specs = [TopicSpec(t, partitions) for t in (topics.events, topics.requests, topics.results, topics.deadletter)]
    asyncio.run(create_topics(bootstrap, [*specs, TopicSpec(changelog, partitions, configs=COMPACT)]))

    codec = history_codec.HistoryCodec(200, 64)
    records = []
    for i in range(n_users):
        h = codec.append(None, event_id=f"e{i}", item_id=str(1 + i % 300), action=1, ts_ms=now_ms)
        assert h is not None
        records.append((f"bulk{i}".encode(), h))
    probe: bytes | None = None
    for j, item in enumerate(PROBE_ITEMS):
        probe = codec.append(probe, event_id=f"p{j}", item_id=item, action=1, ts_ms=now_ms + 1000 * j)
    assert probe is not None
    records.append((b"probe", probe))

    async def main() -> tuple[int, int]:
        p = make_producer(bootstrap, one_record_batches=True, linger_ms=0)
        await p.start()
        try:
            futs = [await p.send(changelog, key=k, value=v) for k, v in records]
            meta = await asyncio.gather(*futs)
        finally:
            await p.stop()
        return meta[-1].partition, meta[-1].offset

    partition, offset = asyncio.run(main())
    return Prefilled(app_id, topics, changelog, probe, partition, offset)


def expected_items(checkpoint: Path, req: RecRequest, history: bytes) -> list[str]:
    """The list the same model gives, in this process, for `req` from `history`."""
    from genrec.streams.serving import InferenceInput, InferenceRunner, load_recommender

    runner = InferenceRunner(load_recommender(checkpoint), torch_threads=1)
    try:
        (expected,) = runner.infer_sync([InferenceInput(req, history)])
    finally:
        runner.close()
    return [r.item_id for r in expected]
