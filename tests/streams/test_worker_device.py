"""The worker's device setting (GENREC_DEVICE / --device) reaches where the model runs: the inference child, or
the thread runner and the versions it swaps in. Without a GPU, "cuda" fails the model load with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from genrec.model.device import DeviceUnavailableError
from genrec.streams import serving
from genrec.streams.inference_process import ProcessInferenceRunner
from genrec.streams.serving import InferenceRunner
from genrec.streams.settings import StreamSettings
from pydantic import ValidationError
from typer.testing import CliRunner


def test_the_setting_reads_the_env_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENREC_DEVICE", raising=False)
    assert StreamSettings().device == "auto"
    monkeypatch.setenv("GENREC_DEVICE", "cuda:1")
    assert StreamSettings().device == "cuda:1"
    assert StreamSettings.from_flags(device="cpu").device == "cpu"
    assert StreamSettings.from_flags(device=None).device == "cuda:1"
    monkeypatch.setenv("GENREC_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device"):
        StreamSettings()


def test_worker_cli_refuses_an_unknown_device_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    from genrec.ops.cli import _register, app

    _register()
    monkeypatch.delenv("GENREC_DEVICE", raising=False)
    result = CliRunner().invoke(app, ["worker", "--device", "tpu", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "device" in result.output and "invalid settings" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a host without a CUDA GPU")
def test_cuda_without_a_gpu_fails_the_childs_load_with_the_reason(checkpoint: Path) -> None:
    # The error comes from the child (the parent never resolves the device), so it proves the setting got there.
    with pytest.raises(DeviceUnavailableError, match="sees no CUDA GPU; use --device cpu or auto"):
        ProcessInferenceRunner(checkpoint, torch_threads=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
async def test_the_child_serves_on_cuda(checkpoint: Path) -> None:
    from genrec.schemas.messages import RecRequest
    from genrec.streams.serving import InferenceInput

    child = ProcessInferenceRunner(checkpoint, torch_threads=1, device="cuda")
    try:
        got, _ = await child.infer([InferenceInput(RecRequest(request_id="r", user_id="u", ts=1, k=5), None)])
        assert not isinstance(got[0], Exception) and len(got[0]) == 5
    finally:
        child.close()


def test_the_child_on_cpu_serves_as_before(checkpoint: Path) -> None:
    child = ProcessInferenceRunner(checkpoint, torch_threads=1, device="cpu")
    try:
        assert child.device == "cpu" and child.version
    finally:
        child.close()


async def test_thread_runner_swaps_load_onto_the_same_device(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    real = serving.load_version

    def spy(path: Any, sha: Any = None, version: Any = None, device: Any = None) -> Any:
        seen.append(device)
        return real(path, sha, version, device)

    monkeypatch.setattr(serving, "load_version", spy)
    runner = InferenceRunner(serving.load_recommender(checkpoint, "cpu"), torch_threads=1, device="cpu")
    try:
        await runner.swap(checkpoint)
    finally:
        runner.close()
    assert seen == ["cpu"]
