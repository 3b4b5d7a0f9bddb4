"""Train for a wall-clock budget (--time 10m) instead of a number of epochs, and still finish the schedule.

One-cycle and cosine schedules only end well if they know how many steps there will be. So the budget
is turned into a number of steps before training: a few real training steps on a throw-away copy of the
model (the run's own data, augmentation and precision) give the seconds per image at full size; the plan
adds validation and the end-of-run work, and takes progressive resizing into account; the largest
number of steps that fits is the run's length (its epochs, the last one possibly cut short). After the
second epoch (the first also pays for starting the workers) the plan is checked once against the real
epoch time and re-made if it is more than REPLAN_DRIFT off. The plan is recorded (config.yaml's epochs, the checkpoint's planned steps), so a
resumed run finishes the same plan.

Reaching the budget is the plan working, not an interruption: the run ends normally, with its verdict
and report saying the budget limited it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cnnlab.config import format_duration
from cnnlab.errors import CnnlabError

# Data loading and per-step overhead do not shrink with the image side: at least this share of a full-size
# step's time is spent whatever the side (measured: ~30-40% for resnet9 at 64 vs 128 px on 2 cores).
FIXED_SHARE = 0.35
VALIDATION_SHARE = 1 / 3  # a forward pass without gradients costs about a third of a training step
FINISH_SECONDS = 3.0  # evaluation files, plots, layer table, preview and report at the end of the run
EPOCH_FILES_SECONDS = 0.3  # each epoch writes weights, metrics, the curves PNG and a checkpoint (~0.3 s measured
#                            for small models on 2 cores; the re-plan after the second epoch corrects it)
CHECK_AFTER_EPOCH = 2  # the first epoch also pays for starting the workers: the second is the typical one
REPLAN_DRIFT = 0.15  # re-plan once when the first epoch took 15% more or less than planned
MEASURE_BATCHES = 3  # timed after one untimed batch (which pays for first-call allocations)


@dataclass
class Plan:
    """How many steps fit the budget, and what that estimate assumed."""

    total_steps: int
    epochs: int
    seconds_per_image: float
    """A full-size training step's seconds per image, as measured."""
    estimated_seconds: float
    """What the plan expects the training and validation to take."""


def measure_seconds_per_image(model: nn.Module, loader, pipeline, loss_fn: nn.Module, batches: int = MEASURE_BATCHES
                              ) -> float:
    """Seconds per image of full training steps (loading, augmentation, forward, backward, update) on a copy
    of `model` with its own optimizer, so the run's weights, optimizer and random numbers are untouched."""
    work = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(work.parameters(), lr=1e-6)
    device = pipeline.device
    timed, images = 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        iterator = iter(loader)
        for k in range(batches + 1):
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            if len(batch) == 0:
                continue
            x = pipeline(batch.images, batch.seeds, train=True)
            with pipeline.precision.autocast(device):
                loss = loss_fn(work(x).float(), batch.labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if k > 0:  # the first batch pays for worker start-up and first-call allocations
                timed += time.perf_counter() - start
                images += len(batch)
        del iterator
    if images == 0:
        raise CnnlabError("could not time a training step for --time: no readable training images")
    return timed / images


def epoch_seconds(side: int, img_size: int, train_images: int, val_images: int, seconds_per_image: float) -> float:
    """One epoch's expected seconds when training at `side` px (progressive resizing) and validating at full size."""
    scale = max(FIXED_SHARE, (side / img_size) ** 2)
    return seconds_per_image * (train_images * scale + val_images * VALIDATION_SHARE) + EPOCH_FILES_SECONDS


def plan(budget_seconds: float, elapsed: float, seconds_per_image: float, steps_per_epoch: int, batch_size: int,
         train_images: int, val_images: int, sides: Callable[[int], list[int]], done_epochs: int = 0,
         epoch_scale: float = 1.0) -> Plan:
    """The most whole epochs whose training and validation fit in what is left of the budget after the
    finish; when not even one does, the steps of one epoch that fit (then validated).

    `sides(epochs)` gives the training side of each epoch of a run of that many epochs (progressive
    resizing depends on the run's length); sides(1) is [img_size]. `done_epochs`: epochs already trained
    (a re-plan), which cost nothing more; the plan then has at least that many. `epoch_scale`: how much longer
    than estimated a measured epoch took (a re-plan), applied to every epoch's estimate.
    """
    validation = val_images * seconds_per_image * VALIDATION_SHARE
    left = budget_seconds - elapsed - FINISH_SECONDS
    step = seconds_per_image * batch_size
    if left < step + validation and not done_epochs:
        raise CnnlabError(f"--time {format_duration(budget_seconds)} is too short: {format_duration(elapsed)} went to "
                          f"setting up, one training step takes about {step:.1f}s, and validating and finishing "
                          f"about {validation + FINISH_SECONDS:.0f}s; give more time, or a smaller --img-size, "
                          "--batch-size or validation split")
    img_size = sides(1)[0]

    def cost(epochs: int) -> float:
        return epoch_scale * sum(epoch_seconds(side, img_size, train_images, val_images, seconds_per_image)
                                 for side in sides(epochs)[done_epochs:])

    cheapest = epoch_scale * epoch_seconds(0, img_size, train_images, val_images, seconds_per_image)  # FIXED_SHARE
    low, high = done_epochs, done_epochs + max(1, int(left / cheapest)) + 1  # cost(low) fits, cost(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= left else (low, middle)
    if low >= 1:
        return Plan(low * steps_per_epoch, low, seconds_per_image, cost(low))
    steps = max(1, min(steps_per_epoch, int((left - validation) / step)))
    return Plan(steps, 1, seconds_per_image, steps * step + validation)


def replan_needed(planned_epoch_seconds: float, actual_epoch_seconds: float) -> bool:
    """True when an epoch's real time is more than REPLAN_DRIFT away from the plan's."""
    return abs(actual_epoch_seconds / max(planned_epoch_seconds, 1e-9) - 1) > REPLAN_DRIFT


def describe(budget_seconds: float, result: Plan) -> str:
    """One line for the log."""
    return (f"time budget {format_duration(budget_seconds)}: {result.total_steps} steps ({result.epochs} epoch"
            f"{'s' if result.epochs != 1 else ''}) planned from {1 / result.seconds_per_image:.0f} img/s measured at "
            "full size")


@dataclass
class Budget:
    """A run's time budget while it trains: the seconds, when it started (time.monotonic) and its plan."""

    seconds: float
    started: float
    plan: Plan
    sides: Callable[[int], list[int]]
    """The progressive-resizing sides of a run of so many epochs (what the plan assumed)."""

    def elapsed(self) -> float:
        return time.monotonic() - self.started
