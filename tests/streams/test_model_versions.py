"""Model versions end to end (issue 4): a real worker follows `genrec.models` through its global table.

A version promoted while requests flow reaches the running worker and results switch to it with no request
lost or answered twice; a version whose weights do not match its sha256 is refused and the current one keeps
serving; rollback goes back to the parent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch
from genrec.model.checkpoint import WEIGHTS, load_checkpoint
from genrec.model.store import ModelStore
from genrec.ops.bench_stream import genrec_command
from genrec.schemas.messages import Event, ModelVersion, RecRequest, RecResult, encode

from tests.conftest import both_brokers
from tests.streams.conftest import WorkerHandle, produce, read_until, values

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

NOW = int(time.time() * 1000)


def _store(checkpoint: Path, root: Path) -> ModelStore:
    """v1 = the test checkpoint; v2 = v1 with perturbed weights (child of v1); bad = v2's twin, weights damaged."""
    store = ModelStore(root)
    base = load_checkpoint(checkpoint)
    store.save_version(base.model, base.item_ids, version="v1", parent=None, dataset="synthetic", metrics={},
                       extra_meta={"item_popularity": base.meta.get("item_popularity")})
    torch.manual_seed(1)
    with torch.no_grad():
        for p in base.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    store.save_version(base.model, base.item_ids, version="v2", parent="v1", dataset="synthetic",
                       metrics={"candidate_ndcg@10": 0.5})
    store.save_version(base.model, base.item_ids, version="bad", parent="v2", dataset="synthetic", metrics={})
    weights = store.path_of("bad") / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8  # the recorded sha256 no longer matches
    weights.write_bytes(bytes(data))
    return store


def _cli(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([*genrec_command(), "models", *args], check=True, capture_output=True, timeout=60,
                         env=env, text=True)
    return out.stdout


def _results(w: WorkerHandle, ids: set[str], timeout_s: float = 60.0) -> list[RecResult]:
    recs = read_until(w.bootstrap, w.topics.results, lambda r: ids <= {v["request_id"] for v in values(r)}, timeout_s)
    return [RecResult.model_validate(v) for v in values(recs) if v["request_id"] in ids]


@both_brokers
def test_promote_swaps_without_losing_requests_refuses_bad_sha_and_rolls_back(
    worker_factory, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    store = _store(checkpoint, tmp_path / "store")
    models_topic = f"t{uuid.uuid4().hex[:8]}.models"
    monkeypatch.setenv("GENREC_MODEL_STORE", str(store.root))
    monkeypatch.setenv("GENREC_MODELS_TOPIC", models_topic)
    w: WorkerHandle = worker_factory()
    w.checkpoint = store.path_of("v1")
    w.start()
    env = {**os.environ, "GENREC_BOOTSTRAP": w.bootstrap}
    t = w.topics
    users = [f"u{i}" for i in range(5)]
    produce(w.bootstrap, [(t.events, u.encode(), encode(Event(event_id=f"{u}-{i}", user_id=u, ts=NOW + i,
                                                             type="click", item_id=str(1 + (11 * j + 3 * i) % 300))))
                          for j, u in enumerate(users) for i in range(5)])
    w.wait_counter("genrec_events_total", 25, outcome="appended")

    def send(prefix: str, n: int, pause_s: float = 0.0) -> set[str]:
        ids = set()
        for i in range(n):
            u = users[i % len(users)]
            rid = f"{prefix}-{i}"
            produce(w.bootstrap, [(t.requests, u.encode(), encode(RecRequest(request_id=rid, user_id=u,
                                                                            ts=NOW + 100_000, k=5)))])
            ids.add(rid)
            time.sleep(pause_s)
        return ids

    first = _results(w, send("a", 10))
    assert {r.model_version for r in first} == {"v1"}
    v1_lists = {r.user_id: [i.item_id for i in r.items] for r in first}

    # Promote v2 while requests keep coming: every request answered once; v1 before, v2 after the switch.
    _cli("promote", "v2", "--store", str(store.root), "--models-topic", models_topic, env=env)
    during = send("b", 40, pause_s=0.1)
    after = send("c", 10)
    got = _results(w, during | after)
    assert sorted(r.request_id for r in got) == sorted(during | after), "lost or duplicated requests"
    assert {r.model_version for r in got if r.request_id.startswith("c-")} == {"v2"}
    order = [r.model_version for r in sorted(got, key=lambda r: int(r.request_id.split("-")[1]) +
                                             (0 if r.request_id.startswith("b") else 1000))]
    assert order == sorted(order), "a request was served by v1 after v2 took over"
    v2_lists = {r.user_id: [i.item_id for i in r.items] for r in got if r.request_id.startswith("c-")}
    assert v2_lists != v1_lists  # the results really come from other weights
    assert w.counter("genrec_model_swaps_total", outcome="swapped") == 1
    assert w.counter("genrec_model_info", version="v2") == 1

    # A version whose weights do not match the sha256 it names: refused, v2 keeps serving.
    bad = store.info("bad")
    from genrec.ops.cli_models import publish

    publish(w.bootstrap, models_topic, ModelVersion(version="bad", path=str(bad.path), sha256=bad.sha256,
                                                    parent="v2", created_at=time.time()))
    w.wait_counter("genrec_model_swaps_total", 1, outcome="refused")
    kept = _results(w, send("d", 5))
    assert {r.model_version for r in kept} == {"v2"}
    # The CLI refuses to publish it at all.
    with pytest.raises(subprocess.CalledProcessError):
        _cli("promote", "bad", "--store", str(store.root), "--models-topic", models_topic, env=env)

    # Rollback: the parent of what was published last ("bad" names v2, so roll back explicitly past it).
    _cli("rollback", "--store", str(store.root), "--models-topic", models_topic, "--to", "v1", env=env)
    w.wait_counter("genrec_model_swaps_total", 2, outcome="swapped")
    back = _results(w, send("e", 5))
    assert {r.model_version for r in back} == {"v1"}
    assert {r.user_id: [i.item_id for i in r.items] for r in back} == {u: v1_lists[u] for u in v1_lists}
    listed = json.loads(_cli("list", "--store", str(store.root), "--models-topic", models_topic, "--json", env=env))
    assert listed["serving"] == "v1"
    # The rollback paused the trainer's publishing (issue 19 item 6); resume lets it publish again.
    assert listed["publishing"]["paused"] and listed["publishing"]["reason"] == "rollback to v1"
    _cli("resume", "--models-topic", models_topic, env=env)
    listed = json.loads(_cli("list", "--store", str(store.root), "--models-topic", models_topic, "--json", env=env))
    assert listed["serving"] == "v1" and not listed["publishing"]["paused"]
    # Rollback without --to: the parent of the serving v1 does not exist → refused with a message.
    with pytest.raises(subprocess.CalledProcessError):
        _cli("rollback", "--store", str(store.root), "--models-topic", models_topic, env=env)

    # A restarted replica follows the topic: it serves the last published version, not --checkpoint.
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    _cli("promote", "v2", "--store", str(store.root), "--models-topic", models_topic, env=env)
    w.start()
    deadline = time.monotonic() + 30
    while w.counter("genrec_model_info", version="v2") != 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert {r.model_version for r in _results(w, send("f", 5))} == {"v2"}
