"""New items online (issue 20 item 2): an item no model has seen, clicked by many users on the events topic,
joins the trainer's vocabulary, and after the trainer's next published version the worker recommends it — ranked
in a top 10 — to a user who never clicked it. Before that the worker serves the histories that name it as it
always did (the unknown item left out)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from genrec.model.checkpoint import load_checkpoint
from genrec.model.data import synthetic_dataset
from genrec.model.store import ModelStore
from genrec.ops.bench_stream import scrape, start_worker, wait_ready
from genrec.ops.broker import free_port
from genrec.schemas.messages import Event, RecRequest, RecResult, encode

from tests.streams.conftest import FAST_GROUP_ENV, WorkerHandle, produce, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

NEW = "brand-new-item"
OVER_CAP = "second-new-item"
T0 = int(time.time() * 1000)  # events before T0 only build histories; the new item's clicks come after


def test_an_item_first_seen_online_is_recommended_after_the_next_publish(
    worker_factory, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    base = load_checkpoint(checkpoint)
    assert NEW not in base.item_ids
    models_topic = f"t{uuid.uuid4().hex[:8]}.models"
    monkeypatch.setenv("GENREC_MODEL_STORE", str(store.root))
    monkeypatch.setenv("GENREC_MODELS_TOPIC", models_topic)
    w: WorkerHandle = worker_factory()
    w.create_topics()
    trainer_env = {
        **FAST_GROUP_ENV, **w.topics.env(), "GENREC_MODEL_STORE": str(store.root), "GENREC_MODELS_TOPIC": models_topic,
        "GENREC_TRAINER_LEARN_FROM_TS_MS": str(T0),
        # One new item per version: a second one seen before the publish stays unknown (over the cap).
        "GENREC_TRAINER_MAX_NEW_ITEMS_PER_VERSION": "1",
        # One round on the new item's clicks (≈ 45 trained, ≈ 15 held back), steps enough to learn it.
        "GENREC_TRAINER_ONLINE__MIN_NEW_EXAMPLES": "40", "GENREC_TRAINER_ONLINE__BATCH_SIZE": "8",
        "GENREC_TRAINER_ONLINE__RECENT_SHARE": "1.0", "GENREC_TRAINER_ONLINE__STEPS_PER_ROUND": "16",
        "GENREC_TRAINER_ONLINE__LR": "0.001", "GENREC_TRAINER_ONLINE__HOLDOUT_EVERY": "4",
        "GENREC_TRAINER_ONLINE__MIN_HOLDOUT": "5",
        # What is tested is the new item, not whether a few steps beat the start on a tiny held-back slice.
        "GENREC_TRAINER_ONLINE__TOLERANCE": "1.0",
    }
    trainer_log = tmp_path / "trainer.log"
    app_id = f"genrec-test-{uuid.uuid4().hex[:8]}"

    def start_trainer() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        proc = start_worker(w.bootstrap, checkpoint, tmp_path / "trainer-state", port, app_id=app_id,
                            log_path=trainer_log, env=trainer_env, extra_args=["--role", "trainer"])
        return proc, port

    def ready(proc: subprocess.Popen[bytes], port: int) -> None:
        try:
            wait_ready(port, proc, timeout_s=90)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{trainer_log.read_text(errors='replace')[-4000:]}") from exc

    trainer, port = start_trainer()
    try:
        w.start()
        ready(trainer, port)
        _run(w, store, base.version, port, trainer_log)
        # A restart resumes with the grown vocabulary: --checkpoint grows to the saved state's items.
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(30) == 0
        trainer, port = start_trainer()
        ready(trainer, port)
        assert scrape(port)["genrec_trainer_vocabulary_items"] == len(base.item_ids) + 1
    finally:
        trainer.send_signal(signal.SIGTERM)
        try:
            trainer.wait(30)
        except Exception:
            trainer.kill()


def _run(w: WorkerHandle, store: ModelStore, base_version: str, trainer_port: int, trainer_log: Path) -> None:
    ds = synthetic_dataset()
    clickers = [f"u{i}" for i in range(60)]
    others = [f"v{i}" for i in range(3)]
    t = w.topics

    def history(u: str, row: int) -> list[tuple[str, bytes, bytes]]:
        items = ds.items[row][:15]
        return [(t.events, u.encode(), encode(Event(event_id=f"{u}-h{j}", user_id=u, ts=T0 - 100_000 + j * 1000,
                                                    type="click", item_id=ds.item_ids[int(i) - 1])))
                for j, i in enumerate(items)]

    def click_new(u: str) -> tuple[str, bytes, bytes]:
        return (t.events, u.encode(), encode(Event(event_id=f"{u}-new", user_id=u, ts=T0 + 1000, type="click",
                                                   item_id=NEW)))

    produce(w.bootstrap, [r for k, u in enumerate(clickers + others) for r in history(u, k)])
    # One click on the new item: too few examples for a round, so the base version still serves. The same user then
    # clicks a second unknown item (same partition, so after it): over the cap of one new item per version.
    over = (t.events, clickers[0].encode(), encode(Event(event_id=f"{clickers[0]}-over", user_id=clickers[0],
                                                         ts=T0 + 2000, type="click", item_id=OVER_CAP)))
    produce(w.bootstrap, [click_new(clickers[0]), over])
    w.wait_counter("genrec_events_total", 15 * 63 + 2, outcome="appended")

    def request(u: str, rid: str) -> RecResult:
        produce(w.bootstrap, [(t.requests, u.encode(), encode(RecRequest(request_id=rid, user_id=u, ts=T0 + 60_000,
                                                                        k=10)))])
        got = read_until(w.bootstrap, t.results, lambda r: rid in {v["request_id"] for v in values(r)}, 30)
        return RecResult.model_validate(next(v for v in values(got) if v["request_id"] == rid))

    # In the meantime: a history that names the unknown item is served, the item left out.
    before = request(clickers[0], "before")
    assert before.model_version == base_version and len(before.items) == 10
    assert NEW not in {i.item_id for i in before.items}

    produce(w.bootstrap, [click_new(u) for u in clickers[1:]])
    deadline = time.monotonic() + 60
    n = 0
    while True:
        n += 1
        res = request(others[0], f"after-{n}")
        served = [i.item_id for i in res.items]
        if NEW in served or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert NEW in served, (f"{NEW} not served after {n} requests (version {res.model_version}): {served}\n"
                           f"{trainer_log.read_text(errors='replace')[-3000:]}")
    rank = served.index(NEW) + 1
    assert res.model_version != base_version and rank <= 10
    items = json.loads((store.path_of(res.model_version) / "items.json").read_text())
    assert items[-1] == NEW and len(items) == len(ds.item_ids) + 1  # appended, every known index unchanged
    assert items[:-1] == list(ds.item_ids)
    live = scrape(trainer_port)
    assert live['genrec_trainer_new_items_total{outcome="joined"}'] == 1
    assert live['genrec_trainer_new_items_total{outcome="over_cap"}'] == 1 and OVER_CAP not in items
    assert live["genrec_trainer_vocabulary_items"] == len(ds.item_ids) + 1
    popularity = json.loads((store.path_of(res.model_version) / "config.json").read_text()).get("item_popularity")
    assert popularity is None or (len(popularity) == len(items) and popularity[-1] == 0)
    assert np.isfinite(res.items[rank - 1].score)
