"""Readiness while a worker recovers its table (issue 6), against a real `genrec worker` process.

A history changelog of 6k users is written before the worker starts, on an empty state directory, so the
worker must restore every value before it serves. Polled from the process start: the web port answers
early (`/health` 200, `/ready` 503) while the model loads and while the table recovers, `/ready` turns 200
only once both are done, and the first request after that is answered from the recovered history — the
very list the same model gives in this process for the value written last to the changelog. Then
`genrec load` (requests and searches) against that worker: every message answered, a latency report.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ops.bench_stream import genrec_command, http_get
from ops.cluster import LocalCluster
from ops.topics import COMPACT, TopicSpec, create_topics
from schemas.messages import RecRequest, RecResult, encode
from streams import history_codec
from tests.streams.conftest import FAST_GROUP_ENV, Topics, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

N_USERS = 6_000
NOW = int(time.time() * 1000) - 3_600_000


def _write_changelog(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """One record per produce batch: Faust's recovery trusts the broker's end offsets (design.md §6)."""
    from ops.kafka_clients import make_producer

    async def main() -> None:
        p = make_producer(bootstrap, one_record_batches=True, linger_ms=0)
        await p.start()
        try:
            futs = [await p.send(topic, key=k, value=v) for k, v in records]
            await asyncio.gather(*futs)
        finally:
            await p.stop()

    asyncio.run(main())


def test_ready_is_false_while_the_table_recovers_and_true_with_the_history_in_place(
    bootstrap: str, checkpoint: Path, tmp_path: Path
) -> None:
    partitions = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
    topics = Topics.unique()
    app_id = f"genrec-ready-{uuid.uuid4().hex[:8]}"
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
    records.append((b"probe", probe))  # the last value: recovery must read to the end
    _write_changelog(bootstrap, changelog, records)

    env = {**FAST_GROUP_ENV, **topics.env()}
    cluster = LocalCluster(bootstrap, checkpoint, tmp_path, app_id, env)
    try:
        rep = cluster.start("r1")
        seen: list[tuple[float, int, dict]] = []
        health_while_not_ready: list[int] = []
        t0 = time.monotonic()
        while True:
            assert rep.alive, f"worker exited with {rep.proc.returncode}\n{cluster.log_tail()}"
            assert time.monotonic() - t0 < 240, f"never ready: {seen[-3:]}\n{cluster.log_tail()}"
            got = rep.ready_state(timeout_s=1.0)
            if got is not None:
                seen.append((time.monotonic() - t0, got[0], got[1]))
                if got[0] == 200:
                    break
                if len(health_while_not_ready) < 3:
                    health_while_not_ready.append(http_get(rep.port, "/health")[0])
            time.sleep(0.05)

        not_ready = [s for _, st, s in seen if st != 200]
        assert all(st == 503 for _, st, _ in seen[:-1])
        assert health_while_not_ready and set(health_while_not_ready) == {200}
        # The model's load was seen from outside (the web port is up first; the inference child takes seconds).
        assert any(not s["model_loaded"] for s in not_ready), f"no not-ready answer while the model loaded: {seen[:3]}"
        # The table's recovery was seen from outside, with the model already loaded.
        recovering = [s for s in not_ready if s["model_loaded"] and (s["in_recovery"] or s["rebalancing"])]
        assert recovering, f"no not-ready answer during recovery: {[(t, s) for t, _, s in seen][:5]}"
        assert all(not s["model_loaded"] or not s["recovered"] or s["in_recovery"] or s["rebalancing"]
                   for s in not_ready)
        final = seen[-1][2]
        assert final["model_loaded"] and final["recovered"] and sorted(final["active"][changelog]) == [0, 1, 2]

        req = RecRequest(request_id="probe-1", user_id="probe", ts=NOW + 60_000, k=10, exclude_seen=True)
        from tests.streams.conftest import produce

        produce(bootstrap, [(topics.requests, b"probe", encode(req))])
        recs = read_until(bootstrap, topics.results, lambda r: any(v["request_id"] == "probe-1" for v in values(r)), 60)
        (result,) = [RecResult.model_validate(v) for v in values(recs) if v["request_id"] == "probe-1"]

        # The operators' load generator against the same ready worker: requests and searches, all answered.
        load = subprocess.run(
            [*genrec_command(), "load", "--bootstrap", bootstrap, "--rate", "40", "--duration", "3", "--users", "20",
             "--query-share", "0.5", "--no-progress", "--drain", "60"],
            capture_output=True, text=True, timeout=120, env={**os.environ, **topics.env()},
        )  # fmt: skip
        assert load.returncode == 0, load.stderr[-2000:]
        report = json.loads(load.stdout.strip().splitlines()[-1])
        assert report["sent"] == 120 and report["lost"] == 0 and report["answered"] == 120
        assert 0 < report["sent_queries"] < 120 and report["by_worker"] == {"r1": 120}
        assert 0 <= report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    finally:
        cluster.stop_all()

    from streams.serving import InferenceInput, InferenceRunner, load_recommender

    runner = InferenceRunner(load_recommender(checkpoint), torch_threads=1)
    try:
        (expected,) = runner.infer_sync([InferenceInput(req, probe)])
    finally:
        runner.close()
    assert [i.item_id for i in result.items] == [r.item_id for r in expected]
    assert not {i.item_id for i in result.items} & {"5", "17", "42", "99", "123"}
