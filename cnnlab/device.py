"""Where and in what number format the model runs: device, autocast precision, memory format."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from cnnlab.config import PRECISIONS, check_choice
from cnnlab.errors import CnnlabError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA if available else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnlabError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"device={name!r} but CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CnnlabError(f"device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def cpu_has_fast_bf16() -> bool:
    """True if the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


@dataclass(frozen=True)
class Precision:
    """Resolved compute settings: autocast dtype (None = fp32) and memory format."""

    name: str  # fp32, bf16 or fp16
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self, device: torch.device):
        """Context manager for the forward pass (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def resolve_precision(name: str, device: torch.device, channels_last: bool | None = None) -> Precision:
    """'auto' -> bf16 where the hardware runs it fast (CPU with AVX-512 BF16/AMX, CUDA with bf16), else fp32."""
    check_choice("precision", name, PRECISIONS)
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        elif device.type == "cpu":
            name = "bf16" if cpu_has_fast_bf16() else "fp32"
        else:
            name = "fp32"
    if name == "fp16" and device.type == "cpu":
        raise CnnlabError("precision=fp16 is not supported on the CPU; use bf16 or fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if channels_last is None:
        # oneDNN and cuDNN pick their fastest convolution kernels for NHWC in reduced precision
        channels_last = dtype is not None
    return Precision(name, dtype, channels_last)


def default_workers() -> int:
    """DataLoader workers from the cores this process may use: leave one core for the main process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1)) if cores > 2 else cores
