"""How much memory one training step takes and how fast the network runs, measured with real steps on
synthetic batches; and the largest batch that fits (--batch-size auto).

At its peak a training step holds (P parameters, batch B, side S):

    parameters       P x 4 bytes: fp32 master weights, under bf16/fp16 autocast too
    gradients        P x 4: the previous step's stay alive through the forward pass (train_step zeroes them
                     just before backward)
    optimizer state  AdamW: exp_avg and exp_avg_sq, P x 8; SGD: the momentum, P x 4
    weight average   --ema: a copy of the model's weights and buffers
    loader batches   workers x PREFETCH_FACTOR uint8 batches of B x 3 x S x S waiting in shared memory (host
                     memory: counted on a CPU only)
    activations      what the forward pass keeps for backward, plus backward's temporaries: measured
    kernels          what the first step of a process adds beyond its tensors (the kernels' code paged in, their
                     cached primitives and workspaces; 12-25 MB measured on a CPU): once, the same at any batch

The first five are counted from the tensors themselves (the optimizer's state after one real step); the
activations are measured with real steps (device augmentation, forward, loss, backward, update) on a
synthetic uint8 batch of the run's batch size and side:

  CUDA  in this process: torch.cuda.max_memory_allocated() during the steps minus memory_allocated() before.
  CPU   the growth of the resident set of a child process (`python -m cnnlab.training.memory`): the kernel's
        high-water mark VmHWM after the steps, reset before them by writing 5 to /proc/self/clear_refs, minus
        VmRSS before. In this process two things would hide the growth: glibc's malloc keeps freed blocks
        for reuse, and its threshold for giving a large block its own mapping rises with use (to 32 MB),
        so after one step the next needs no new pages (measured: resnet9 at 128 px, batch 8: 3.9 MB of
        growth instead of 20.1). The child starts with MALLOC_MMAP_THRESHOLD_=65536: every block of 64 KiB
        or more is mapped when allocated and unmapped when freed, so its resident set follows the live
        tensors (training speed is unchanged by it: 14.6 vs 14.7 img/s in the same measurement). A fresh
        process also carries no cache from anything before, and it cannot take more than the memory that
        is free (RLIMIT_DATA): a step too large fails to allocate there instead of swapping this machine or
        waking the OOM killer.

Both measure one warm-up step at the shape first (kernel selection, the optimizer's state, code paged in),
then MEASURED_STEPS steps. A step whose layers' outputs alone (a forward pass on the meta device, which
allocates nothing) exceed the free memory is not attempted.

Checked against real runs (tests/training/test_memory.py; simple_cnn at 64 px, batch 32): 92.4 MB of activations
measured here, 92.5 MB grown by a real run's second epoch of training steps; the whole step (gradients, optimizer
state, activations, kernels) 116.8 MB here, 122.9 MB grown by a real run's first epoch under the default allocator.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cnnlab.data.augment import for_preset
from cnnlab.data.cache import available_memory
from cnnlab.data.loaders import PREFETCH_FACTOR
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.training.device import resolve_precision
from cnnlab.training.forward import InputPipeline
from cnnlab.training.optim import build_optimizer

# A run may plan to use this share of the free memory. The measured step is one step of a fresh process;
# a real run also holds the dataset's Python objects, DataLoader worker processes (copy-on-write forks whose
# touched pages count), the validation batches, the allocator's fragmentation after thousands of steps,
# and on a CPU the page cache that keeps a disk image cache fast. Ultralytics' AutoBatch aims at 60% of a
# GPU; 80% keeps a fifth for all that here (tests/training/test_memory.py compares with real runs).
MARGIN = 0.8
# Larger batches do not train faster on a CPU: measured img/s of a training step (1 thread, synthetic
# batches; benchmarks/batch_size.py measures it and writes benchmarks/results/batch_size.md) rise up to
# batch 64-256 and fall beyond, while memory keeps growing linearly.
CPU_MAX_BATCH = 256
# An epoch of at least this many steps: the one-cycle schedule warms up over a quarter of the steps and
# the weight average looks back over a tenth of them; a batch of a quarter of the data would give a
# 10-epoch run 40 updates.
MIN_STEPS_PER_EPOCH = 8
MMAP_THRESHOLD = 65536  # bytes: blocks from this size on get their own mapping in the measuring child
MEASURED_STEPS = 3  # after one warm-up step at the same shape; the speed is the fastest of them


@dataclass(frozen=True)
class StepSpec:
    """What one training step computes, as plain values, so that a child process can rebuild it."""

    model: str
    num_classes: int
    model_options: dict
    side: int
    """The network's input side: --img-size, or --tile for tiled runs."""
    tiled: bool
    precision: str
    """Resolved: fp32, bf16 or fp16."""
    channels_last: bool
    augment: str
    augment_on: str
    optimizer: str
    label_smoothing: float
    ema: bool
    workers: int
    threads: int
    """torch intra-op threads (the child uses as many as this process)."""


def step_spec(config, num_classes: int, precision, model_options: dict, workers: int) -> StepSpec:
    """The StepSpec of a run with TrainConfig `config`, resolved `precision` and the model's factory options."""
    return StepSpec(config.model, num_classes, dict(model_options), config.img_size, bool(config.tile),
                    precision.name, precision.channels_last, config.augment, config.augment_on, config.optimizer,
                    config.label_smoothing, config.ema, workers, torch.get_num_threads())


@dataclass(frozen=True)
class StepMemory:
    """One training step at one batch size and side: its memory at the peak (bytes) and its measured speed."""

    batch_size: int
    side: int
    parameters: int
    """Number of parameters."""
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    average_bytes: int
    """--ema's copy of the model (0 without)."""
    loader_bytes: int
    """uint8 batches the DataLoader workers hold ready."""
    activation_bytes: int
    """Measured: the step's growth over what it started with."""
    kernel_bytes: int
    """Measured: what a process's first training step adds beyond its tensors (the kernels' code paged in, their
    cached primitives and workspaces); once per process, whatever the batch."""
    seconds_per_image: float
    """Measured: augmentation on the device, forward, backward and update, without loading (the fastest step)."""
    method: str

    @property
    def static_bytes(self) -> int:
        """Everything but the activations: held for the whole run, whatever the step does."""
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes + self.average_bytes + \
            self.loader_bytes

    @property
    def peak_bytes(self) -> int:
        """The step's memory at its peak."""
        return self.static_bytes + self.activation_bytes + self.kernel_bytes

    @property
    def activations_per_image(self) -> float:
        return self.activation_bytes / self.batch_size


class OutOfMemory(Exception):
    """A measured step could not allocate its memory (CUDA out of memory, or more than the free memory)."""


def format_bytes(count: float) -> str:
    """Bytes with three significant digits: 950 kB, 71.7 MB, 2.15 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    return f"{count:.0f} B"


def free_memory(device: torch.device) -> int:
    """Memory a training run on `device` can have: MemAvailable on the CPU; on CUDA the device's free memory
    plus what this process's caching allocator holds already (it is this process's to use)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    return available_memory()


def layer_output_bytes(spec: StepSpec, side: int) -> int | None:
    """Bytes of every layer's output (fp32) for one image at `side`: what a forward pass keeps for backward at
    the least. From a forward pass on the meta device, which allocates nothing; None for a model that cannot
    run there."""
    total = 0

    def add(module, args, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    try:
        with torch.device("meta"):
            model = create_model(spec.model, spec.num_classes, **(spec.model_options | {"img_size": side}))
        for module in model.modules():
            if not any(True for _ in module.children()):
                module.register_forward_hook(add)
        model(torch.empty(1, 3, side, side, device="meta"))
    except (NotImplementedError, RuntimeError, ValueError):
        return None
    return total


# --------------------------------------------------------------------------------------------
# real steps on synthetic batches (in the child for the CPU, in this process for CUDA)
# --------------------------------------------------------------------------------------------

class _Stepper:
    """A model built from a StepSpec at one side, its optimizer and batch pipeline: train_step's work."""

    def __init__(self, spec: StepSpec, device: torch.device, side: int):
        torch.manual_seed(0)
        self.spec, self.device, self.side = spec, device, side
        precision = resolve_precision(spec.precision, device, spec.channels_last)
        model = create_model(spec.model, spec.num_classes, **(spec.model_options | {"img_size": side})).to(device)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.train()
        self.optimizer = build_optimizer(model, spec.optimizer, 1e-6, 0.05)  # the run's parameter groups
        self.pipeline = InputPipeline(device, precision, augment=for_preset(spec.augment, spec.augment_on))
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
        self.generator = torch.Generator().manual_seed(0)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch: uint8 images (B, 3, S, S) and labels (B,), random."""
        images = torch.randint(0, 256, (batch_size, 3, self.side, self.side), dtype=torch.uint8,
                               generator=self.generator)
        return images, torch.randint(0, self.spec.num_classes, (batch_size,), generator=self.generator)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """As train_step: forward, zero the previous gradients, backward, update."""
        x = self.pipeline(images, torch.arange(len(labels)), train=True)  # (B, 3, S, S) on the device
        with self.pipeline.precision.autocast(self.device):
            loss = self.loss_fn(self.model(x).float(), labels.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def static(self) -> dict[str, int]:
        """Bytes of the parameters, gradients, optimizer state and --ema's copy, counted from the tensors."""
        params = [p for p in self.model.parameters()]
        parameter_bytes = sum(p.numel() * p.element_size() for p in params)
        gradient_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
        optimizer_bytes = sum(t.numel() * t.element_size() for state in self.optimizer.state.values()
                              for t in state.values() if isinstance(t, torch.Tensor))
        average_bytes = sum(t.numel() * t.element_size() for t in self.model.state_dict().values()) \
            if self.spec.ema else 0
        return {"parameters": sum(p.numel() for p in params), "parameter_bytes": parameter_bytes,
                "gradient_bytes": gradient_bytes, "optimizer_bytes": optimizer_bytes, "average_bytes": average_bytes}


def _status(key: str) -> int:
    """A `kB` line of /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise CnnlabError(f"/proc/self/status has no {key}: measuring CPU memory needs Linux")


def _start_peak(device: torch.device) -> int:
    """Reset the peak meter; returns the memory in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")  # resets VmHWM to the current resident set
    return _status("VmRSS")


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status("VmHWM")


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text \
        or "out of memory" in text.lower()


_first_step: dict[str, int] = {}  # device type -> the growth of this process's first step (see kernel_bytes)


def measure_here(stepper: _Stepper, batch_size: int) -> dict:
    """One warm-up step, then MEASURED_STEPS measured ones at `batch_size`: the growth of memory in use over
    the steps (bytes), the seconds per image, the static bytes and the first step's kernel bytes; raises
    OutOfMemory."""
    device = stepper.device
    first = device.type not in _first_step
    try:
        if first:
            before = _start_peak(device)
        stepper.step(*stepper.batch(batch_size))  # warm-up: kernels chosen, optimizer state made, code paged in
        if first:  # gradients, optimizer state, activations, and what the first step of a process adds
            first_growth = _peak(device) - before
        gc.collect()
        before = _start_peak(device)
        images, labels = stepper.batch(batch_size)  # the loader's batch is part of the step
        seconds = math.inf
        for _ in range(MEASURED_STEPS):
            started = time.perf_counter()
            stepper.step(images, labels)
            seconds = min(seconds, time.perf_counter() - started)  # the least disturbed by other work on the cores
        growth = max(_peak(device) - before, 0)
    except RuntimeError as error:
        if not _is_out_of_memory(error):
            raise
        raise OutOfMemory(str(error).strip().splitlines()[0][:300]) from None
    finally:
        stepper.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if stepper.device.type == "cuda":
            torch.cuda.empty_cache()
    static = stepper.static()
    if first:
        _first_step[device.type] = first_growth - static["gradient_bytes"] - static["optimizer_bytes"] - growth
    return {"activation_bytes": growth, "kernel_bytes": max(_first_step[device.type], 0),
            "seconds_per_image": seconds / batch_size, **static}


def _child() -> None:
    """`python -m cnnlab.training.memory`: read a StepSpec (one JSON line), then {"batch_size", "side"} lines;
    answer each with a JSON line (the measurement, {"out_of_memory": why} or {"error": why})."""
    spec = StepSpec(**json.loads(sys.stdin.readline()))
    torch.set_num_threads(spec.threads)
    device, stepper = torch.device("cpu"), None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if stepper is None or stepper.side != request["side"]:
                stepper = None  # free the old model before building the new one
                gc.collect()
                stepper = _Stepper(spec, device, request["side"])
            # never more than the memory free (as the parent counts it): an allocation beyond fails here
            # instead of swapping this machine
            hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
            limit = _status("VmData") + min(request["limit"], available_memory())
            resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard),
                                                      hard))
            reply = measure_here(stepper, request["batch_size"])
        except OutOfMemory as error:
            reply = {"out_of_memory": str(error)}
        except (CnnlabError, RuntimeError, ValueError, TypeError) as error:
            reply = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"}
        print(json.dumps(reply), flush=True)
    os._exit(0)  # nothing to clean up: skip the interpreter's (and torch's) slow teardown


class MemoryProbe:
    """Measures training steps of a StepSpec on a device: in a child process on the CPU (see the module's
    docstring), in this process on CUDA. Use as a context manager; measure(batch_size) -> StepMemory."""

    def __init__(self, spec: StepSpec, device: torch.device, free: int | None = None):
        if device.type not in ("cpu", "cuda"):
            raise CnnlabError(f"measuring memory needs a cpu or cuda device, not {device}; give --batch-size a number")
        self.spec, self.device = spec, device
        self.free = free_memory(device) if free is None else free
        """The memory a run can have (free_memory, unless given); a CPU step may not allocate more."""
        self._process: subprocess.Popen | None = None
        self._stderr = None
        self._stepper: _Stepper | None = None
        self._floors: dict[int, int | None] = {}  # side -> layer_output_bytes

    def layer_output_bytes(self, side: int | None = None) -> int | None:
        """layer_output_bytes of one image at `side` (default: the spec's)."""
        side = side or self.spec.side
        if side not in self._floors:
            self._floors[side] = layer_output_bytes(self.spec, side)
        return self._floors[side]

    def __enter__(self) -> "MemoryProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def measure(self, batch_size: int, side: int | None = None) -> StepMemory:
        """The memory and speed of a training step at `batch_size` and `side` (default: the spec's); raises
        OutOfMemory when it cannot allocate."""
        side = side or self.spec.side
        floor = self.layer_output_bytes(side)
        if floor is not None and floor * batch_size > self.free:  # not even worth trying
            raise OutOfMemory(f"the outputs of its layers alone take {format_bytes(floor * batch_size)}")
        if self.device.type == "cuda":
            if self._stepper is None or self._stepper.side != side:
                self._stepper = None
                self._stepper = _Stepper(self.spec, self.device, side)
            reply = measure_here(self._stepper, batch_size)
            method = "CUDA peak memory allocated (torch.cuda.max_memory_allocated) over real steps"
        else:
            reply = self._ask({"batch_size": batch_size, "side": side, "limit": self.free})
            method = "growth of a child process's resident set (VmHWM) over real steps"
        # uint8 batches the workers hold, in the host's memory: part of a CPU run's, not of a GPU's
        workers_hold = self.spec.workers * PREFETCH_FACTOR * batch_size * 3 * side * side \
            if self.device.type == "cpu" else 0
        return StepMemory(batch_size, side, reply["parameters"], reply["parameter_bytes"], reply["gradient_bytes"],
                          reply["optimizer_bytes"], reply["average_bytes"], workers_hold, reply["activation_bytes"],
                          reply["kernel_bytes"], reply["seconds_per_image"], method)

    def _ask(self, request: dict) -> dict:
        if self._process is None:
            self._start()
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:  # the child died: killed for memory (SIGKILL), or a crash
            code = self._process.wait()
            self._process = None
            if code == -9:
                raise OutOfMemory(f"the measuring process was killed (signal 9) at batch {request['batch_size']}: "
                                  "out of memory")
            raise CnnlabError(f"the process measuring a training step ended with code {code}: {self._stderr_tail()}")
        reply = json.loads(line)
        if "out_of_memory" in reply:
            raise OutOfMemory(reply["out_of_memory"])
        if "error" in reply:
            raise CnnlabError(f"measuring a training step of {self.spec.model} at batch {request['batch_size']}, "
                              f"{request['side']} px failed: {reply['error']}")
        return reply

    def _start(self) -> None:
        package_parent = str(Path(__file__).resolve().parents[2])  # the folder holding cnnlab/
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD),
                   PYTHONPATH=os.pathsep.join([package_parent, *filter(None, [os.environ.get("PYTHONPATH")])]))
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._process = subprocess.Popen([sys.executable, "-m", "cnnlab.training.memory"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        self._process.stdin.write(json.dumps(dataclasses.asdict(self.spec)) + "\n")
        self._process.stdin.flush()

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return "no output"
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "no output"

    def close(self) -> None:
        """End the child process (or free the CUDA model)."""
        self._stepper = None
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
        if self._process is not None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


# --------------------------------------------------------------------------------------------
# the largest batch that fits
# --------------------------------------------------------------------------------------------

def batch_cap(device: torch.device, train_images: int) -> tuple[int, str]:
    """The largest batch --batch-size auto may pick here (a power of two), and why."""
    per_epoch = max(train_images // MIN_STEPS_PER_EPOCH, 1)
    caps = [(1 << (per_epoch.bit_length() - 1),
             f"an epoch of {train_images} training images keeps at least {MIN_STEPS_PER_EPOCH} steps")]
    if device.type == "cpu":
        caps.append((CPU_MAX_BATCH, "larger batches do not train faster on a CPU"))
    return min(caps)


def largest_batch(measure: Callable[[int], int | None], budget: int, cap: int) -> tuple[int | None, dict]:
    """The largest power of two <= `cap` whose step's peak bytes, `measure(batch)` (None: could not allocate),
    are at most `budget`; None when not even batch 1 fits. Returns it and {batch: bytes} of every measurement.

    Memory grows linearly with the batch (each image's activations), so a line through batch 1 and 4 predicts
    the largest power of two that fits. The prediction is only where the search starts: it is measured, then
    doubled while the next one fits, or, when it does not fit, the boundary is bisected (in powers of two)
    between the largest that fits and the smallest that does not. The answer always has a measurement that
    fits, and the next power of two one that does not (or is over the cap)."""
    measured: dict[int, int | None] = {}

    def fits(batch: int) -> bool:
        if batch not in measured:
            measured[batch] = measure(batch)
        return measured[batch] is not None and measured[batch] <= budget

    if not fits(1):
        return None, measured
    largest = 1 << (cap.bit_length() - 1)  # the largest power of two <= cap
    low, high = 1, None  # fits; does not fit (None: not found yet)
    probe = min(4, largest)
    if probe > 1:
        low, high = (probe, None) if fits(probe) else (1, probe)
    if high is None and low > 1:
        per_image = (measured[low] - measured[1]) / (low - 1)
        guess = low
        while guess * 2 <= largest and (per_image <= 0 or measured[1] + per_image * (guess * 2 - 1) <= budget):
            guess *= 2
        if guess > low:
            low, high = (guess, None) if fits(guess) else (low, guess)
    while high is None and low * 2 <= largest:
        low, high = (low * 2, None) if fits(low * 2) else (low, low * 2)
    while high is not None and high > low * 2:
        middle = 1 << ((low.bit_length() + high.bit_length()) // 2 - 1)
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low, measured


@dataclass
class BatchChoice:
    """What --batch-size auto chose: the batch, its measured step, the memory it had and its limit."""

    batch_size: int
    step: StepMemory
    free_bytes: int
    cap: int
    cap_reason: str
    measured: dict
    """{batch: the step's peak bytes, or None where it could not allocate}."""

    def describe(self) -> str:
        """One line for the log."""
        limited = f"capped at {self.cap}: {self.cap_reason}" if self.batch_size == self.cap else \
            f"batch {self.batch_size * 2} would need more"
        return (f"batch size auto: {self.batch_size} (a step measured at {format_bytes(self.step.peak_bytes)}, within "
                f"{MARGIN:.0%} of the {format_bytes(self.free_bytes)} free; {limited})")


def choose_batch_size(probe: MemoryProbe, train_images: int) -> BatchChoice:
    """The largest batch whose measured step fits MARGIN of the probe's free memory, within batch_cap; a
    CnnlabError saying what a step needs and what to change when not even batch 1 fits."""
    free = probe.free
    cap, reason = batch_cap(probe.device, train_images)
    steps: dict[int, StepMemory] = {}

    def peak(batch: int) -> int | None:
        try:
            steps[batch] = probe.measure(batch)
        except OutOfMemory:
            return None
        return steps[batch].peak_bytes

    batch, measured = largest_batch(peak, int(MARGIN * free), cap)
    if batch is None:
        raise not_even_batch_one(probe, steps.get(1), free)
    return BatchChoice(batch, steps[batch], free, cap, reason, measured)


def _min_side(spec: StepSpec) -> int:
    with torch.device("meta"):  # only its minimum side: no weights allocated
        return create_model(spec.model, spec.num_classes, **spec.model_options).min_input_size


def not_even_batch_one(probe: MemoryProbe, step: StepMemory | None, free: int) -> CnnlabError:
    """The error for a step that does not fit even at batch 1: the memory it needs (measured; or, when it could
    not even allocate, measured at a smaller side and scaled by the pixels) and what to change."""
    spec = probe.spec
    share = f"more than {MARGIN:.0%} of the {format_bytes(free)} free on {probe.device}"
    if step is not None:
        needs = (f"one training step of {spec.model} needs {format_bytes(step.peak_bytes)} "
                 f"({format_bytes(step.activation_bytes)} of activations for one image), {share}")
    elif (floor := probe.layer_output_bytes()) is not None and floor > free:
        needs = (f"one training step of {spec.model} needs more than {format_bytes(floor)} (the outputs of its layers "
                 f"for one image, before gradients), {share}")
    else:  # it could not allocate: measured at a side a sixteenth of the memory holds, scaled by the pixels
        needs = f"one training step of {spec.model} could not even allocate its memory in the {format_bytes(free)} free"
        side = spec.side // 2
        while side >= max(16, _min_side(spec)):
            floor = probe.layer_output_bytes(side)
            try:
                if floor is not None and floor > free / 16:
                    raise OutOfMemory("too large to measure here")
                small = probe.measure(1, side)
            except OutOfMemory:
                side //= 2
                continue
            factor = (spec.side / side) ** 2
            needs = (f"one training step of {spec.model} needs about "
                     f"{format_bytes(small.peak_bytes - small.activation_bytes + small.activation_bytes * factor)} "
                     f"(measured at {side} px, its {format_bytes(small.activation_bytes)} of activations times "
                     f"{factor:g} for the pixels), {share}")
            break
    flag = "--tile" if spec.tiled else "--img-size"
    remedy = ("a smaller --tile (the scale does not change a tile's memory)" if spec.tiled else
              "a smaller --img-size, or --tile T --scale X to train on tiles of large images")
    return CnnlabError(f"{flag} {spec.side} does not fit in memory even at batch 1: {needs}; use {remedy}, "
                       "or a smaller model")


if __name__ == "__main__":
    _child()
