"""The trainer role end to end (issue 4): `genrec worker --role trainer` against the real broker learns from
events and served lists, stores a verified version and publishes it on the models topic; its step counter
and adaptive weighter state survive a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

import pytest
from genrec.model.checkpoint import load_checkpoint, version_sha256
from genrec.model.data import synthetic_dataset
from genrec.model.store import ModelStore
from genrec.ops.bench_stream import http_get, scrape, start_worker, wait_ready
from genrec.ops.broker import free_port
from genrec.ops.cli_models import read_published
from genrec.ops.replay import dataset_events
from genrec.ops.topics import TopicSpec, create_topics
from genrec.schemas.messages import RecResult, ScoredItem, encode

from tests.conftest import both_brokers
from tests.streams.conftest import FAST_GROUP_ENV, Topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _ready_state(port: int) -> dict:
    return json.loads(http_get(port, "/ready")[1])


def _wait(pred, timeout_s: float, what: str, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if pred():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached in {timeout_s}s\n{log.read_text(errors='replace')[-4000:]}")


@both_brokers
def test_trainer_publishes_a_verified_version_and_resumes_after_restart(
    any_bootstrap: str, checkpoint: Path, tmp_path: Path
) -> None:
    bootstrap = any_bootstrap
    store = ModelStore(tmp_path / "store")
    base = load_checkpoint(checkpoint)
    topics = Topics.unique()
    models_topic = f"t{uuid.uuid4().hex[:8]}.models"
    env = {
        **FAST_GROUP_ENV, **topics.env(),
        "GENREC_MODEL_STORE": str(store.root), "GENREC_MODELS_TOPIC": models_topic,
        "GENREC_TRAINER_ONLINE__MIN_NEW_EXAMPLES": "16", "GENREC_TRAINER_ONLINE__BATCH_SIZE": "16",
        "GENREC_TRAINER_ONLINE__STEPS_PER_ROUND": "4", "GENREC_TRAINER_ONLINE__HOLDOUT_EVERY": "4",
        "GENREC_TRAINER_ONLINE__MIN_HOLDOUT": "5",
        # Publishing is what is tested here, not whether a few steps beat the start on a tiny slice.
        "GENREC_TRAINER_ONLINE__TOLERANCE": "1.0",
    }
    app_id = f"genrec-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "trainer.log"
    # The topics exist before the trainer starts, as in production (`genrec topics create`): left to the
    # broker's auto-creation they got its default count (Tansu 4, Apache Kafka num.partitions=1), and on
    # Kafka the trainer's table changelog (3) then mismatched its source topic (Faust's PartitionsMismatch).
    n = int(FAST_GROUP_ENV["GENREC_PARTITIONS"])
    asyncio.run(create_topics(bootstrap, [TopicSpec(name, n) for name in (topics.events, topics.requests,
                                                                           topics.results, topics.deadletter)]))

    def start() -> tuple[object, int]:
        port = free_port()
        proc = start_worker(bootstrap, checkpoint, tmp_path / "state", port, app_id=app_id, log_path=log, env=env,
                            extra_args=["--role", "trainer"])
        try:
            wait_ready(port, proc, timeout_s=90)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from exc
        return proc, port

    proc, port = start()
    assert _ready_state(port)["step"] == 0 and _ready_state(port)["serving_version"] == base.version
    ds = synthetic_dataset()
    events = list(dataset_events(ds, limit=400))
    # A served list for the first users: its items become impressions for their next event.
    served = [RecResult(request_id=f"r{i}", user_id=e.user_id, model_version=base.version, latency_ms=1.0,
                        worker="w", items=[ScoredItem(item_id=str(j), rank=k + 1, score=0.5, retrieval_score=0.1)
                                           for k, j in enumerate((5, 6, 7))]) for i, e in enumerate(events[:20])]
    produce(bootstrap, [(topics.results, r.user_id.encode(), encode(r)) for r in served])
    produce(bootstrap, [(topics.events, e.user_id.encode(), encode(e)) for e in events[:300]])

    def published() -> list:
        return read_published(bootstrap, models_topic, timeout_s=3)

    def saved_step() -> int:
        path = store.trainer_dir / "state.json"
        return json.loads(path.read_text())["step"] if path.is_file() else 0

    _wait(lambda: len(published()) >= 1 and saved_step() >= 12, 120, "a published version", log)
    msg = published()[0]
    assert msg.parent == base.version and msg.kind == "publish"
    info = store.info(msg.version)
    assert version_sha256(info.path) == msg.sha256 == info.sha256
    assert {"candidate_ndcg@10", "serving_ndcg@10", "holdout_n", "delay_s_mean"} <= set(msg.metrics)
    assert msg.metrics["delay_s_max"] >= 0 and msg.metrics["holdout_n"] >= 5
    new = load_checkpoint(info.path, expected_sha256=msg.sha256)
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(new.model.parameters(), base.model.parameters(),
                                                           strict=True))
    assert moved > 0  # the published weights learned something
    # The gate's figures as gauges (issue 20 item 5), next to the trainer process's own CPU and memory.
    live = scrape(port)
    assert 0.0 <= live['genrec_trainer_holdout_ndcg{model="candidate"}'] <= 1.0
    assert 0.0 <= live['genrec_trainer_holdout_ndcg{model="serving"}'] <= 1.0
    assert live["genrec_trainer_holdout_examples"] >= 5 and live["process_resident_memory_bytes"] > 0
    assert "faust_messages_received_total" in live

    # Restart: the step counter and the weighter state come back from the store (saved on SIGTERM too).
    live_step = _ready_state(port)["step"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    state_before = json.loads((store.trainer_dir / "state.json").read_text())
    assert state_before["step"] >= live_step
    step_before = state_before["step"]
    assert step_before >= 12 and state_before["weighter"]["step"] == step_before
    assert state_before["weighter"]["weights"] != [1.0, 1.0]  # it updated (every 10 steps)
    proc, port = start()
    resumed = _ready_state(port)
    assert resumed["step"] == step_before and resumed["serving_version"] == state_before["serving_version"]
    produce(bootstrap, [(topics.events, e.user_id.encode(), encode(e)) for e in events[300:]])
    _wait(lambda: saved_step() > step_before, 60, "training after the restart", log)
    state_after = json.loads((store.trainer_dir / "state.json").read_text())
    assert state_after["weighter"]["step"] == state_after["step"] > step_before
    assert state_after["weighter"]["initial_losses"] == state_before["weighter"]["initial_losses"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
