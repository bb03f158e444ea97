"""The device choice (model/device.py) for train, eval and serving, and CUDA autocast for inference.

The CPU tests run everywhere; the CUDA ones skip without a GPU (this repository's CI has none) and compare the GPU's
lists with the CPU's on the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from genrec.model.config import TrainConfig
from genrec.model.device import DeviceUnavailableError, autocast_dtype, inference_autocast, resolve_device
from genrec.model.serving import Recommender
from genrec.model.tokens import History
from pydantic import ValidationError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")


def test_auto_picks_cuda_only_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_is_a_clear_error_not_a_silent_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match=r"sees no CUDA GPU; use --device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="GENREC_DEVICE"):
        resolve_device("cuda:1")


def test_a_gpu_index_past_the_count_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceUnavailableError, match="1 CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["tpu", "mps", "cuda:x", "gpu", ""])
def test_unknown_names_are_refused(name: str) -> None:
    if name == "":
        assert resolve_device(name) == resolve_device("auto")  # empty env var: the default
        return
    with pytest.raises(DeviceUnavailableError, match="unknown device"):
        resolve_device(name)


def test_train_config_takes_the_same_names() -> None:
    assert TrainConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValidationError):
        TrainConfig(device="tpu")


def test_no_autocast_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None
    with inference_autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype == torch.float32


def _histories(rec: Recommender, n: int = 16) -> list[History]:
    rng = np.random.default_rng(0)
    ids = rec.item_ids
    out = []
    for u in range(n):
        m = 3 + u % 9
        items = [ids[int(i)] for i in rng.integers(0, len(ids), m)]
        out.append(rec.history_from_raw(items, [1] * m, [1_700_000_000_000 + 60_000 * i for i in range(m)]))
    return out


def _flat(lists: list[list[object]]) -> list[tuple[str, float, float]]:
    return [(r.item_id, r.score, r.retrieval_score) for rs in lists for r in rs]  # type: ignore[attr-defined]


def test_cpu_serving_is_unchanged_by_the_autocast_switch(checkpoint: Path) -> None:
    # The CPU path must be bit-identical with and without the CUDA autocast code in place.
    on = Recommender.from_checkpoint(checkpoint, device="cpu", autocast=True)
    off = Recommender.from_checkpoint(checkpoint, device="cpu", autocast=False)
    assert on.autocast_dtype is None
    hists = _histories(on)
    now = [1_700_000_000_000 + 86_400_000] * len(hists)
    assert _flat(on.recommend(hists, 10, now_ms=now)) == _flat(off.recommend(hists, 10, now_ms=now))


def test_serving_on_cuda_without_a_gpu_fails_before_loading(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailableError, match="sees no CUDA GPU"):
        Recommender.from_checkpoint(checkpoint, device="cuda")


def _overlap(a: list[list[object]], b: list[list[object]]) -> float:
    shares = [len({r.item_id for r in x} & {r.item_id for r in y}) / max(1, len(x))  # type: ignore[attr-defined]
              for x, y in zip(a, b, strict=True)]
    return float(np.mean(shares))


@needs_cuda
def test_cuda_lists_match_the_cpu_lists(checkpoint: Path) -> None:
    cpu = Recommender.from_checkpoint(checkpoint, device="cpu")
    hists = _histories(cpu)
    now = [1_700_000_000_000 + 86_400_000] * len(hists)
    want = cpu.recommend(hists, 10, now_ms=now)
    fp32 = Recommender.from_checkpoint(checkpoint, device="cuda", autocast=False).recommend(hists, 10, now_ms=now)
    amp_rec = Recommender.from_checkpoint(checkpoint, device="cuda")
    assert amp_rec.autocast_dtype in (torch.bfloat16, torch.float16)
    amp = amp_rec.recommend(hists, 10, now_ms=now)
    # fp32 on the GPU differs from the CPU only in summation order (and TF32, where enabled): near-identical lists.
    assert _overlap(want, fp32) >= 0.95
    # bf16/fp16 moves near-ties: most of every top 10 stays, and the scores stay finite fp32.
    assert _overlap(want, amp) >= 0.8
    assert all(isinstance(r.score, float) and np.isfinite(r.score) for rs in amp for r in rs)


@needs_cuda
def test_training_runs_on_cuda() -> None:
    from genrec.model.data import load_dataset
    from genrec.model.train import fit_and_test

    ds = load_dataset("synthetic", None)
    result, test = fit_and_test(ds, TrainConfig(epochs=1, min_epochs=1, device="cuda"), progress=False,
                                d_model=32, n_layers=1, n_heads=2)
    assert 0.0 <= test["hr@10"] <= 1.0
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.tokens_per_s > 0
