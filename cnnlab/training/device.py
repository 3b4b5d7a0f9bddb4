"""Where and in what number format the model runs: device, autocast precision, memory format."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.config import PRECISIONS, check_choice
from cnnlab.errors import CnnlabError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA if available else CPU; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnlabError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"--device {name!r} but CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CnnlabError(f"--device {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


# Overrides the CPU check below: "1" makes `--precision auto` pick bf16 on any CPU, "0" fp32. bf16 autocast
# runs on every x86-64 CPU (emulated, slowly, without AVX-512 BF16), so one machine can run the test suite
# as either kind: `CNNLAB_FAST_BF16=1 make test` on an AVX2 machine, `=0` on one with AVX-512 BF16/AMX.
FAST_BF16_ENV = "CNNLAB_FAST_BF16"


def cpu_has_fast_bf16() -> bool:
    """True if the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX), or CNNLAB_FAST_BF16 says so."""
    forced = os.environ.get(FAST_BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise CnnlabError(f"{FAST_BF16_ENV}={forced!r} is not 0 or 1; unset it to detect the CPU")
        return forced == "1"
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
        # NHWC is where oneDNN (CPU, in fp32 too: resnet18 +12 %, simple_cnn +46 % training at 224 px on
        # 2 cores, benchmarks/large_images.py) and cuDNN (reduced precision) have their fastest kernels
        channels_last = device.type == "cpu" or dtype is not None
    return Precision(name, dtype, channels_last)


def default_workers() -> int:
    """DataLoader workers from the cores this process may use.

    Measured on 2 cores (benchmarks/large_images.py, section d; simple_cnn at 224 px, with and without
    the cache): on a quiet machine 2 workers were the fastest in every run, 6-27 % ahead of 1 worker
    and 1-23 % ahead of 0; only while other jobs loaded the machine was 1 worker ahead (2-8 %). A
    user's own machine is the quiet case, so 2 cores get 2 workers (a worker whose prefetch queue is
    full sleeps). From 3 cores on, one core is left to the main process; on 1 core a worker cannot
    overlap anything: 0.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    if cores <= 2:
        return 0 if cores == 1 else 2
    return min(8, cores - 1)


class CompiledOrEager(nn.Module):
    """Runs torch.compile(model); if compiling fails, warns once and runs the eager model from then on.

    torch.compile compiles at the first call, not when it is called, so a missing C++ compiler or an
    unsupported op shows up in the first forward pass: that is where the fallback has to be.
    """

    def __init__(self, model: nn.Module, backend: str | object = "inductor"):
        super().__init__()
        self.model = model
        self.failure: str | None = None
        try:
            self.compiled = torch.compile(model, backend=backend)
        except Exception as error:  # noqa: BLE001 - e.g. a Python version torch.compile does not support
            self.compiled = None
            self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        error = getattr(error, "inner_exception", None) or error  # BackendCompilerFailed wraps the cause
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        self.failure = f"{type(error).__name__}: {first_line}"
        print(f"warning: torch.compile failed ({self.failure}); running the model without it",
              file=sys.stderr, flush=True)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The model's forward on its inputs (images, or bags of tiles and their counts)."""
        if self.failure is None:
            try:
                return self.compiled(*inputs)
            except Exception as error:  # noqa: BLE001 - compiler errors come in many types
                self._fall_back(error)
        return self.model(*inputs)


def compile_model(model: nn.Module, backend: str | object = "inductor") -> nn.Module:
    """The model for forward passes under --compile (save weights from `model` itself, not from this)."""
    return CompiledOrEager(model, backend)
