"""Which torch device a command runs on: `--device` / `GENREC_DEVICE` for `genrec train`, `genrec eval`,
`genrec recommend` and the worker (streams/settings.py `device`).

    auto     a CUDA GPU when torch sees one, else the CPU (the default everywhere)
    cpu      the CPU, even where a GPU exists
    cuda     the first CUDA GPU, or a clear error where there is none (`cuda:N` picks GPU N)

An explicit "cuda" never falls back to the CPU silently: an operator who asked for the GPU and got the CPU would
see a ten-times-slower worker and no reason for it.

Inference on CUDA runs under autocast (`inference_autocast`): bf16 where the GPU supports it, else fp16. On the
CPU nothing changes (no autocast; fp32 as before).
"""

from __future__ import annotations

import contextlib
import re
from typing import Final

import torch

DEVICE_ENV: Final = "GENREC_DEVICE"
DEVICE_HELP: Final = "auto | cpu | cuda[:N] (auto: a CUDA GPU when torch sees one, else the CPU)"
# What settings and flags accept; resolve_device checks the hardware.
DEVICE_PATTERN: Final = r"^(auto|cpu|cuda(:\d+)?)$"


class DeviceUnavailableError(RuntimeError):
    """The asked-for device is not a known name or is not present on this machine."""


def resolve_device(device: str | None = None) -> torch.device:
    """The torch device for `device` (None or "auto": CUDA if available, else the CPU); raises
    `DeviceUnavailableError` naming the fix for an unknown name or a CUDA device this machine lacks."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise DeviceUnavailableError(f"unknown device {device!r}: choose {DEVICE_HELP}")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceUnavailableError(
                f"device {name!r} was asked for (--device / {DEVICE_ENV}) but torch {torch.__version__} "
                f"({build}) sees no CUDA GPU; use --device cpu or auto, or run the CUDA image "
                "(ops/Dockerfile, target cuda) on a GPU host")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailableError(f"device {name!r}: this machine has {count} CUDA GPU(s)")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision inference runs in on `device`: bf16 on a CUDA GPU that supports it (Ampere and
    later: the fp32 exponent range, so no overflow in the logits), fp16 on older GPUs, None (fp32) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def inference_autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[object]:
    """Autocast for inference on `device`; a no-op on the CPU, so CPU results are bit-identical to before."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
