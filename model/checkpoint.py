"""Checkpoints: weights in safetensors (never pickle), configuration, item vocabulary and metrics in JSON.

    CKPT/model.safetensors   tensors only
    CKPT/config.json         {"model": ModelConfig, "train": TrainConfig, "dataset", "version", "parent",
                              "created_at", "sha256": of model.safetensors}
    CKPT/items.json          the item vocabulary: index i (1-based) ↔ items[i-1], the data set's own ids
    CKPT/metrics.json        training and evaluation metrics
    CKPT/manifest.json       {"format": 1, "files": {name: sha256}} of the weights, config.json and items.json

A version is named by the sha256 of its manifest (`version_sha256`): one hash that covers the weights, the
configuration and the vocabulary, so an edited config.json (another serving order, other popularity counts) or
items.json (ids shifted by one) is refused like damaged weights. Checkpoints written before manifests existed
have none: they are still loaded, named by their weights' hash as before, with config.json and items.json
unchecked. A manifest checkpoint asked for by its weights' hash alone is refused, with the hash to ask for.

Written into a temporary sibling directory and renamed into place, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec.model.config import ModelConfig
from genrec.model.text import ITEM_TEXT_CACHE_GLOB

if TYPE_CHECKING:
    import torch
    from genrec.model.generative import GenerativeRecommender

# torch and safetensors are imported where weights are read or written, not here: the worker process reads
# manifests and paths from this module (streams/app.py), while its model lives in the inference child, and a
# torch import costs about a second of every restart (issue 19's recovery time).

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
MANIFEST_FILES = (WEIGHTS, "config.json", "items.json")
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_MANIFEST_BYTES = 64 * 1024


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not match its recorded hash."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Checkpoint:
    model: GenerativeRecommender
    item_ids: list[str]
    meta: dict[str, Any]
    metrics: dict[str, Any]
    path: Path

    @property
    def version(self) -> str:
        return str(self.meta.get("version", self.path.name))


def save_checkpoint(path: Path | str, model: GenerativeRecommender, item_ids: list[str], *, dataset: str,
                    train_config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                    version: str | None = None, parent: str | None = None,
                    extra_meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    if len(item_ids) != model.cfg.num_items:
        raise ValueError(f"{len(item_ids)} item ids for a model of {model.cfg.num_items} items")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    from safetensors.torch import save_file

    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        digest = sha256_file(tmp / WEIGHTS)
        meta = {
            "format": 1,
            "model": model.cfg.model_dump(),
            "train": train_config or {},
            "dataset": dataset,
            "version": version or f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{digest[:8]}",
            "parent": parent,
            "created_at": time.time(),
            "sha256": digest,
            **(extra_meta or {}),
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        (tmp / "items.json").write_text(json.dumps(item_ids))
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2))
        write_manifest(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.is_dir():
            # The item-text embedding cache lives next to the checkpoint (model.text.embed_item_texts); a
            # new save of the same directory keeps it, since it is keyed by encoder and texts, not weights.
            for cached in path.glob(ITEM_TEXT_CACHE_GLOB):
                shutil.copy2(cached, tmp / cached.name)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def resolve_in_store(store: Path | str, path: Path | str) -> Path:
    """`path` (relative to the model store, or absolute) as a real path inside `store`, or CheckpointError.

    A model path arrives in a message (`ModelVersion.path`): it must not make a worker read anything
    outside its model store (`..`, an absolute path elsewhere, a symlink pointing out of it).
    """
    root = Path(store).resolve()
    target = Path(path)
    resolved = (target if target.is_absolute() else root / target).resolve()
    if resolved != root and root not in resolved.parents:
        raise CheckpointError(f"model path {str(path)[:256]!r} is outside the model store {root}")
    if resolved == root:
        raise CheckpointError(f"model path {str(path)[:256]!r} is the model store itself, not a checkpoint in it")
    return resolved


def read_meta(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: not a checkpoint (no config.json)") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}/config.json is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path}/config.json has no model configuration")
    return meta


def write_manifest(path: Path) -> str:
    """Record the sha256 of the weights, config.json and items.json in `path`/manifest.json; returns the
    version hash (the manifest's own sha256)."""
    files = {name: sha256_file(path / name) for name in MANIFEST_FILES}
    raw = json.dumps({"format": 1, "files": files}, sort_keys=True, indent=2).encode("utf-8")
    (path / MANIFEST).write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def version_sha256(path: Path | str) -> str:
    """The hash a version is published under: of its manifest, or (written before manifests) of its weights."""
    path = Path(path)
    manifest = path / MANIFEST
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()[: MAX_MANIFEST_BYTES + 1]).hexdigest()
    sha = read_meta(path).get("sha256")
    if not sha:
        raise CheckpointError(f"{path}: no {MANIFEST} and config.json records no sha256 of {WEIGHTS}")
    return str(sha)


def _check_manifest(path: Path, weights_digest: str) -> str | None:
    """Every file the manifest names matches it; returns the manifest's hash (None: no manifest, an old one)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    raw = manifest.read_bytes()[: MAX_MANIFEST_BYTES + 1]
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{manifest}: larger than the {MAX_MANIFEST_BYTES}-byte bound")
    try:
        files = json.loads(raw)["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest} is unreadable: {e}") from e
    for name in MANIFEST_FILES:
        if name not in files:
            raise CheckpointError(f"{manifest} does not cover {name}")
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        digest = weights_digest if name == WEIGHTS else sha256_file(path / name)
        if digest != files[name]:
            raise CheckpointError(f"{path}/{name}: sha256 {digest[:12]}… does not match the manifest's "
                                  f"{str(files[name])[:12]}… (edited or damaged since it was saved)")
    return hashlib.sha256(raw).hexdigest()


def verify_checkpoint(path: Path | str, expected_sha256: str | None = None) -> str:
    """Check a checkpoint's hashes without loading it; returns its version hash (`version_sha256`).

    The weights must match config.json's sha256 and, when there is a manifest, every file must match it;
    `expected_sha256` (from a `ModelVersion` message) must be the version hash.
    """
    path = Path(path)
    meta = read_meta(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS} is missing")
    if weights.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{weights}: larger than the {MAX_CHECKPOINT_BYTES}-byte bound")
    if meta.get("sha256") is None and expected_sha256 is None:
        # Unverifiable: save_checkpoint always records the hash, so its absence means a hand-made or damaged file.
        raise CheckpointError(f"{path}/config.json records no sha256 of {WEIGHTS}")
    digest = sha256_file(weights)
    want = meta.get("sha256")
    if want is not None and want != digest:
        raise CheckpointError(f"{weights}: sha256 {digest[:12]}… does not match the expected {str(want)[:12]}…")
    manifest_digest = _check_manifest(path, digest)
    have = manifest_digest or digest
    if expected_sha256 is not None and expected_sha256 != have:
        if manifest_digest is not None and expected_sha256 == digest:
            raise CheckpointError(
                f"{path}: sha256 {digest[:12]}… names the weights only; this version is named by its manifest's "
                f"sha256 {manifest_digest[:12]}… (weights, config.json, items.json). Publish it again "
                "(genrec models promote) to name it so.")
        raise CheckpointError(f"{path}: sha256 {have[:12]}… does not match the expected {expected_sha256[:12]}…")
    return have


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu", expected_sha256: str | None = None
                    ) -> Checkpoint:
    """Load and verify (`verify_checkpoint`): the hashes, then the contents (shapes, vocabulary, finite weights)."""
    import torch
    from genrec.model.generative import GenerativeRecommender
    from safetensors.torch import load_file

    path = Path(path)
    verify_checkpoint(path, expected_sha256)
    meta = read_meta(path)
    weights = path / WEIGHTS
    try:
        cfg = ModelConfig(**meta["model"])
        item_ids = json.loads((path / "items.json").read_text())
        tensors = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise CheckpointError(f"{path}: cannot load checkpoint: {e}") from e
    if not isinstance(item_ids, list) or len(item_ids) != cfg.num_items:
        raise CheckpointError(f"{path}/items.json does not hold {cfg.num_items} item ids")
    # A hash proves the file is the one written, not that training wrote sane numbers into it.
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {', '.join(bad[:3])}")
    model = GenerativeRecommender(cfg)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured model: {e}") from e
    model.to(device).eval()
    metrics_path = path / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{metrics_path} is unreadable: {e}") from e
    return Checkpoint(model, [str(x) for x in item_ids], meta, metrics, path)
