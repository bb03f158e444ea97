"""Model safety: a corrupted, truncated or sha-mismatched checkpoint is refused with a clear error, and a
serving runner that is asked to swap to it keeps serving its current model, unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from genrec.model.checkpoint import (
    MANIFEST,
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    resolve_in_store,
    save_checkpoint,
    sha256_file,
    version_sha256,
    write_manifest,
)
from genrec.model.config import ModelConfig
from genrec.model.generative import GenerativeRecommender
from genrec.model.serving import Recommender
from genrec.schemas.messages import RecRequest
from genrec.streams import history_codec
from genrec.streams.serving import InferenceInput, InferenceRunner, ProbeFailed
from safetensors.torch import save_file

N_ITEMS = 40
TS = 1_700_000_000_000


def _save(path: Path, seed: int, version: str) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(num_items=N_ITEMS, d_model=16, n_layers=1, n_heads=2, dropout=0.0, max_events=20)
    model = GenerativeRecommender(cfg).eval()
    return save_checkpoint(path, model, [f"i{i}" for i in range(1, N_ITEMS + 1)], dataset="test", version=version)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    _save(root / "good-a", 0, "good-a")
    _save(root / "good-b", 1, "good-b")
    return root


def _damage(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    w = dst / WEIGHTS
    raw = bytearray(w.read_bytes())
    cfg_path = dst / "config.json"
    meta = json.loads(cfg_path.read_text())
    original = json.loads(cfg_path.read_text())
    if how == "flipped byte":
        raw[len(raw) // 2] ^= 0x01
        w.write_bytes(bytes(raw))
    elif how == "truncated, hash updated":
        w.write_bytes(bytes(raw[: len(raw) // 3]))
        meta["sha256"] = sha256_file(w)
    elif how == "empty weights":
        w.write_bytes(b"")
    elif how == "weights missing":
        w.unlink()
    elif how == "config not json":
        cfg_path.write_text("{oops")
    elif how == "no recorded hash":
        meta.pop("sha256")
    elif how == "items do not fit":
        (dst / "items.json").write_text(json.dumps(["x"]))
    elif how == "other architecture":
        meta["model"]["d_model"] = 32
    elif how == "config edited":
        meta["serving_order"] = meta.get("serving_order", "x") + "-edited"  # any edit after the save
    elif how == "items edited":
        (dst / "items.json").write_text(json.dumps(list(reversed(json.loads((dst / "items.json").read_text())))))
    elif how == "NaN weights, hash updated":
        tensors = {k: v.clone() for k, v in load_checkpoint(src).model.state_dict().items()}
        first = next(k for k, t in tensors.items() if t.is_floating_point())
        tensors[first].view(-1)[0] = float("nan")
        save_file(tensors, str(w))
        meta["sha256"] = sha256_file(w)
    else:
        raise AssertionError(how)
    if cfg_path.read_text() != "{oops" and meta != original:
        cfg_path.write_text(json.dumps(meta))
    if how in MANIFEST_REWRITTEN:
        write_manifest(dst)  # hashes made to agree: what remains to refuse it is the contents
    return dst


# Damages made with every hash updated to agree (a bug or a hand edit that also rewrote the hashes).
MANIFEST_REWRITTEN = {"truncated, hash updated", "items do not fit", "other architecture",
                      "NaN weights, hash updated"}


DAMAGES = {
    "flipped byte": "sha256",
    "truncated, hash updated": "cannot load",
    "empty weights": "sha256",
    "weights missing": "missing",
    "config not json": "not valid JSON",
    "no recorded hash": "no sha256",
    "items do not fit": "item ids",
    "other architecture": "do not fit",
    "NaN weights, hash updated": "non-finite",
    "config edited": "config.json: sha256 .* does not match the manifest",
    "items edited": "items.json: sha256 .* does not match the manifest",
}


@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_checkpoint_is_refused_with_a_clear_error(store: Path, tmp_path: Path, how: str) -> None:
    bad = _damage(store / "good-a", tmp_path / "bad", how)
    with pytest.raises(CheckpointError, match=DAMAGES[how]):
        load_checkpoint(bad)


def test_an_expected_hash_from_the_models_topic_must_match(store: Path) -> None:
    good = store / "good-a"
    version_hash = version_sha256(good)
    assert version_hash == hashlib.sha256((good / MANIFEST).read_bytes()).hexdigest() != sha256_file(good / WEIGHTS)
    load_checkpoint(good, expected_sha256=version_hash)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(good, expected_sha256="0" * 64)
    # The weights' hash alone no longer names a version that has a manifest: refused, with the hash to use.
    with pytest.raises(CheckpointError, match=f"names the weights only.*{version_hash[:12]}"):
        load_checkpoint(good, expected_sha256=sha256_file(good / WEIGHTS))


def test_a_version_saved_before_manifests_still_loads_by_its_weights_hash(store: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(store / "good-a", old)
    (old / MANIFEST).unlink()
    weights_hash = sha256_file(old / WEIGHTS)
    assert version_sha256(old) == weights_hash
    assert load_checkpoint(old, expected_sha256=weights_hash).version == "good-a"
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(old, expected_sha256="0" * 64)


def _inputs() -> list[InferenceInput]:
    codec = history_codec.HistoryCodec(50, 8)
    buf = None
    for i, item in enumerate(["i3", "i7", "i9"]):
        buf = codec.append(buf, event_id=f"e{i}", item_id=item, action=1, ts_ms=TS + i)
    reqs = [RecRequest(request_id="r1", user_id="u", ts=TS + 100, k=5), RecRequest(request_id="r2", user_id="v", ts=TS)]
    return [InferenceInput(reqs[0], buf), InferenceInput(reqs[1], None)]


def _served(lists: list) -> list[list[str]]:
    assert not any(isinstance(x, Exception) for x in lists), lists
    return [[r.item_id for r in out] for out in lists]


@pytest.mark.parametrize("where", ["thread", "process"])
async def test_the_current_model_keeps_serving_when_a_swap_is_refused(store: Path, tmp_path: Path, where: str) -> None:
    if where == "process":
        from genrec.streams.inference_process import ProcessInferenceRunner

        runner: InferenceRunner = ProcessInferenceRunner(store / "good-a", torch_threads=1)
    else:
        runner = InferenceRunner(Recommender.from_checkpoint(store / "good-a"), torch_threads=1)
    try:
        before, _ = await runner.infer(_inputs())
        for i, how in enumerate(DAMAGES):
            bad = _damage(store / "good-a", tmp_path / f"bad{i}", how)

            with pytest.raises(CheckpointError):
                await runner.swap(bad)
            assert runner.version == "good-a"
            after, _ = await runner.infer(_inputs())
            assert _served(after) == _served(before)

        # Loads, but cannot serve: the test inference refuses it (issue 19 item 6).
        with pytest.raises(ProbeFailed, match=r"test inference \(new user\)"):
            await runner.swap(_cannot_serve(store / "good-b", tmp_path / "nan-popularity"))
        # Another version than the message names.
        with pytest.raises(ValueError, match="names other"):
            await runner.swap(store / "good-b", expected_version="other")
        assert runner.version == "good-a"
        assert _served((await runner.infer(_inputs()))[0]) == _served(before)

        # A good checkpoint is taken, and serves from the next batch on.
        assert await runner.swap(store / "good-b", expected_version="good-b") == "good-b"
        assert runner.version == "good-b"
        swapped, _ = await runner.infer(_inputs())
        assert _served(swapped) != _served(before)  # different weights, different lists
    finally:
        runner.close()


def _cannot_serve(src: Path, dst: Path) -> Path:
    """A copy whose config.json (not covered by the weights' hash) gives every item a NaN popularity: it loads,
    and every new user's list has NaN scores, which no result can carry."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "config.json").read_text())
    meta["item_popularity"] = [float("nan")] * len(meta.get("item_popularity") or [0] * meta["model"]["num_items"])
    (dst / "config.json").write_text(json.dumps(meta))
    write_manifest(dst)  # saved so: every hash agrees, only serving shows the problem
    return dst


def test_model_paths_from_messages_stay_inside_the_model_store(store: Path, tmp_path: Path) -> None:
    assert resolve_in_store(store, "good-a") == (store / "good-a").resolve()
    assert resolve_in_store(store, store / "good-b") == (store / "good-b").resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (store / "escape").symlink_to(outside)
    for path in ["../elsewhere", "good-a/../../elsewhere", "/etc", str(outside), "escape", ".", ""]:
        with pytest.raises(CheckpointError):
            resolve_in_store(store, path)
