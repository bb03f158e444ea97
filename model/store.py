"""The model store: a directory (local or a shared volume) of immutable, verified model versions and the
trainer's resumable state. No Kafka here: `ModelVersion` messages are built from `VersionInfo` upstream.

    STORE/versions/<version>/    a checkpoint (model/checkpoint.py: safetensors + config.json with sha256,
                                 version, parent, created_at; metrics.json), written atomically
    STORE/trainer/model/         the trainer's current weights (a checkpoint, atomically replaced)
    STORE/trainer/optimizer.safetensors, STORE/trainer/state.json   optimizer and counters, atomically replaced
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genrec.model.checkpoint import CheckpointError, read_meta, save_checkpoint, version_sha256

if TYPE_CHECKING:
    import torch
    from genrec.model.generative import GenerativeRecommender

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_STATE_BYTES = 1 << 20


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    sha256: str
    parent: str | None
    created_at: float
    metrics: dict[str, float]


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.trainer_dir = self.root / "trainer"

    def path_of(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise ValueError(f"invalid version name {version!r}")
        return self.versions_dir / version

    def save_version(self, model: GenerativeRecommender, item_ids: list[str], *, version: str, parent: str | None,
                     dataset: str, metrics: dict[str, Any], extra_meta: dict[str, Any] | None = None) -> VersionInfo:
        path = self.path_of(version)
        if path.exists():
            raise FileExistsError(f"version {version} already exists in {self.root}")
        save_checkpoint(path, model, item_ids, dataset=dataset, metrics=metrics, version=version, parent=parent,
                        extra_meta=extra_meta)
        return self.info(version)

    def info(self, version: str) -> VersionInfo:
        path = self.path_of(version)
        meta = read_meta(path)
        metrics_path = path / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        return VersionInfo(str(meta.get("version", version)), path, version_sha256(path), meta.get("parent"),
                           float(meta.get("created_at", 0.0)), _numeric(metrics if isinstance(metrics, dict) else {}))

    def list(self) -> list[VersionInfo]:
        """Every readable version, oldest first."""
        out = []
        if self.versions_dir.is_dir():
            for p in self.versions_dir.iterdir():
                if p.name.startswith(".") or not p.is_dir():
                    continue
                try:
                    out.append(self.info(p.name))
                except (CheckpointError, KeyError, ValueError, OSError):
                    continue
        return sorted(out, key=lambda v: (v.created_at, v.version))

    # ---- trainer state ----------------------------------------------------------------------------
    def save_trainer_state(self, model: GenerativeRecommender, item_ids: list[str], dataset: str,
                           state: dict[str, Any], optimizer: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> None:
        """Weights, optimizer and counters; each file replaced atomically, counters last (they name the
        step the other two belong to, and a crash between leaves at worst newer weights with older counters)."""
        save_checkpoint(self.trainer_dir / "model", model, item_ids, dataset=dataset,
                        version=f"trainer-step-{state.get('step', 0)}")
        from safetensors.torch import save_file

        tensors, opt_meta = optimizer
        fd, tmp = tempfile.mkstemp(prefix=".optimizer.", dir=self.trainer_dir)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"meta": json.dumps(opt_meta)})
            os.replace(tmp, self.trainer_dir / "optimizer.safetensors")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _atomic_write(self.trainer_dir / "state.json", json.dumps({**state, "saved_at": time.time()}).encode())

    def load_trainer_state(self) -> tuple[Path, dict[str, Any], tuple[dict[str, torch.Tensor], dict[str, Any]]] | None:
        """(weights checkpoint dir, counters, optimizer) or None when the trainer never saved."""
        state_path = self.trainer_dir / "state.json"
        if not state_path.is_file():
            return None
        if state_path.stat().st_size > MAX_STATE_BYTES:
            raise CheckpointError(f"{state_path}: larger than {MAX_STATE_BYTES} bytes")
        state = json.loads(state_path.read_text())
        opt_path = self.trainer_dir / "optimizer.safetensors"
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(opt_path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return self.trainer_dir / "model", state, (load_file(str(opt_path)), meta)
