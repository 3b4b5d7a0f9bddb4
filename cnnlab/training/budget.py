"""Train for a wall-clock budget (--time 10m) instead of a number of epochs, and still finish the schedule.

One-cycle and cosine schedules only end well if they know how many steps there will be. So the budget
is turned into a number of steps before training: a few real training steps on a throw-away copy of the
model (the run's own loader, augmentation and precision) give the seconds per image at full size and, with
progressive resizing, at the smallest side too (loading and augmentation do not shrink with the side, so
the two are measured rather than assumed). The plan adds validation, each epoch's files and the end of
the run; the most epochs that fit are the run's length (or, when not even one does, the steps of one).
After the second epoch (the first also pays for starting the workers) the plan is checked once against
the real epoch time: if it is more than REPLAN_DRIFT off, the speed at that epoch's side is corrected
and the rest of the run planned again. The plan is recorded (config.yaml's
epochs, the checkpoint's planned steps), so a resumed run finishes the same plan.

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
from cnnlab.training.forward import ImageInputs

VALIDATION_SHARE = 1 / 3  # a forward pass without gradients costs about a third of a training step
FINISH_SECONDS = 3.0  # evaluation files, plots, layer table, preview and report at the end of the run
EPOCH_FILES_SECONDS = 0.3  # each epoch writes weights, metrics, the curves PNG and a checkpoint (~0.3 s measured
#                            for small models on 2 cores; the check after the second epoch corrects it)
CHECK_AFTER_EPOCH = 2  # the first epoch also pays for starting the workers: the second is the typical one
REPLAN_DRIFT = 0.15  # re-plan once when that epoch took 15% more or less than planned
MEASURE_BATCHES = 5  # timed after one untimed batch (which pays for first-call allocations)
MIN_PART = 0.2  # a last epoch cut short to fit the budget must train at least a fifth of an epoch
HEAD_SHARE = 0.5  # the classifier phase (transfer) may take up to half the budget; fine-tuning gets the rest


@dataclass(frozen=True)
class Speed:
    """Measured seconds per training image at the full side and at the smallest side progressive resizing uses
    (the same when it is off). In between, a step costs its compute (side squared) or what loading and
    augmentation cost at the smallest side, whichever is more: on the CPU cores that also train, the data
    pipeline sets a floor that smaller images do not go below (measured: 155 img/s at both 64 and 96 px,
    101 img/s at 128 px, resnet9 narrow on 2 cores)."""

    full_side: int
    full: float
    small_side: int
    small: float

    def seconds_per_image(self, side: int) -> float:
        """Seconds per training image at `side`."""
        if self.small_side >= self.full_side or side >= self.full_side:
            return self.full
        return max(self.small, self.full * (side / self.full_side) ** 2)


@dataclass
class Plan:
    """How many steps fit the budget, and what that estimate assumed."""

    total_steps: int
    epochs: int
    speed: Speed
    estimated_seconds: float
    """What the plan expects the training and validation to take."""


def measure_seconds_per_image(model: nn.Module, loader, pipeline, loss_fn: nn.Module, side: int | None = None,
                              batches: int = MEASURE_BATCHES, keep_scale: bool = False,
                              inputs: Callable | None = None) -> float:
    """Seconds per image of full training steps (loading, augmentation, forward, backward, update) on a copy of
    `model` with its own optimizer, at the loader's side or brought to `side` as training does (smaller_side: tiles,
    `keep_scale`, cropped); the run's weights, optimizer and random numbers are untouched. `inputs`: how training
    makes the net's input from a batch (cnnlab.training.forward.ImageInputs, or a bag run's BagInputs: its
    scoring pass and selected tiles are part of the step), at its steady_epoch."""
    inputs = inputs or ImageInputs(pipeline, keep_scale, num_classes=0)
    work = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(work.parameters(), lr=1e-6)
    device = pipeline.device
    timed, images = 0.0, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        iterator, read = iter(loader), 0
        for k in range(batches + 1):
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:  # an epoch of fewer batches than the measurement: read it again
                if not read:
                    break
                iterator, read = iter(loader), 0
                batch = next(iterator)
            read += 1
            if len(batch) == 0:
                continue
            x, _ = inputs(work, batch, inputs.steady_epoch, side)  # the net's inputs: images, or bags and counts
            with pipeline.precision.autocast(device):
                loss = loss_fn(work(*x).float(), batch.labels.to(device))
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


def measure_speed(model: nn.Module, loader, pipeline, loss_fn: nn.Module, full_side: int, small_side: int,
                  keep_scale: bool = False, inputs: Callable | None = None) -> Speed:
    """The Speed of full training steps at `full_side` and, when progressive resizing starts smaller, at
    `small_side` (measure_seconds_per_image at each)."""
    full = measure_seconds_per_image(model, loader, pipeline, loss_fn, inputs=inputs)
    small = measure_seconds_per_image(model, loader, pipeline, loss_fn, side=small_side, keep_scale=keep_scale,
                                      inputs=inputs) if small_side < full_side else full
    # a smaller side never costs more: a measurement that says so caught a burst of other load on the cores
    return Speed(full_side, full, small_side, min(small, full))


def epoch_seconds(side: int, speed: Speed, train_images: int, val_images: int) -> float:
    """One epoch's expected seconds: training at `side` px, validating at full size, writing its files."""
    return (train_images * speed.seconds_per_image(side) + val_images * speed.full * VALIDATION_SHARE
            + EPOCH_FILES_SECONDS)


def plan(budget_seconds: float, elapsed: float, speed: Speed, steps_per_epoch: int, batch_size: int,
         train_images: int, val_images: int, sides: Callable[[int], list[int]], done_epochs: int = 0,
         epoch_scale: float = 1.0) -> Plan:
    """The most epochs whose training and validation fit in what is left of the budget after the finish, the
    last one cut short to the steps that fit (when at least MIN_PART of it does); when not even one epoch
    fits, the steps of one that do (then validated).

    `sides(epochs)` gives the training side of each epoch of a run of that many epochs (progressive
    resizing depends on the run's length). `done_epochs`: epochs already trained (a re-plan), which cost
    nothing more; the plan then has at least that many. `epoch_scale`: how much longer than estimated a
    measured epoch took (a re-plan), applied to every epoch's estimate.
    """
    validation = val_images * speed.full * VALIDATION_SHARE
    left = budget_seconds - elapsed - FINISH_SECONDS
    step = speed.full * batch_size
    if left < step + validation and not done_epochs:
        raise CnnlabError(f"--time {format_duration(budget_seconds)} is too short: {format_duration(elapsed)} went to "
                          f"setting up, one training step takes about {step:.1f}s, and validating and finishing "
                          f"about {validation + FINISH_SECONDS:.0f}s; give more time, or a smaller --img-size, "
                          "--batch-size or validation split")

    def cost(epochs: int) -> float:
        return epoch_scale * sum(epoch_seconds(side, speed, train_images, val_images)
                                 for side in sides(epochs)[done_epochs:])

    cheapest = epoch_scale * epoch_seconds(speed.small_side, speed, train_images, val_images)
    low, high = done_epochs, done_epochs + max(1, int(left / cheapest)) + 1  # cost(low) fits, cost(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= left else (low, middle)
    # and a part of one more epoch (a run one epoch longer, its last epoch cut short), if a useful part fits:
    # with epochs of a minute, whole epochs alone would leave up to a minute of the budget unused
    epochs = low + 1
    whole = epoch_scale * sum(epoch_seconds(side, speed, train_images, val_images)
                              for side in sides(epochs)[done_epochs:-1])
    last_side = sides(epochs)[-1]
    per_step = epoch_scale * speed.seconds_per_image(last_side) * batch_size
    extra = min(steps_per_epoch - 1, int((left - whole - epoch_scale * (validation + EPOCH_FILES_SECONDS)) / per_step))
    if extra >= max(1, MIN_PART * steps_per_epoch) or low == 0:
        extra = max(1, extra)
        return Plan((epochs - 1) * steps_per_epoch + extra, epochs, speed,
                    whole + extra * per_step + epoch_scale * (validation + EPOCH_FILES_SECONDS))
    return Plan(low * steps_per_epoch, low, speed, cost(low))


def corrected_speed(speed: Speed, side: int, actual: float, train_images: int, val_images: int) -> Speed:
    """The speed with what an epoch at `side` really took (`actual` seconds with its validation and files):
    at the full side the full-size figure changes, on the data pipeline's floor the small-side one, and in
    between (compute-bound, below full size) both by the same factor."""
    observed = (actual - val_images * speed.full * VALIDATION_SHARE - EPOCH_FILES_SECONDS) / max(train_images, 1)
    observed = max(observed, 1e-6)
    if side >= speed.full_side:
        return Speed(speed.full_side, observed, speed.small_side, min(speed.small, observed))
    if speed.seconds_per_image(side) <= speed.small:  # on the floor: this is the small-side speed
        return Speed(speed.full_side, max(speed.full, observed), speed.small_side, observed)
    factor = observed / speed.seconds_per_image(side)
    return Speed(speed.full_side, speed.full * factor, speed.small_side, speed.small * factor)


def replan_needed(planned_epoch_seconds: float, actual_epoch_seconds: float) -> bool:
    """True when an epoch's real time is more than REPLAN_DRIFT away from the plan's."""
    return abs(actual_epoch_seconds / max(planned_epoch_seconds, 1e-9) - 1) > REPLAN_DRIFT


def another_view(done: int, requested: int, seconds_per_view: float, elapsed: float,
                 budget_seconds: float | None) -> bool:
    """Whether the classifier phase (cnnlab.training.transfer) encodes one more view after `done`: view 0 always;
    the others up to `requested`, and with a budget only while the phase still ends within HEAD_SHARE of it
    (`elapsed`: seconds since the run started, `seconds_per_view`: what a view has taken)."""
    if done == 0:
        return requested > 0
    if done >= requested:
        return False
    return budget_seconds is None or elapsed + seconds_per_view <= HEAD_SHARE * budget_seconds


def head_views(requested: int, seconds_per_view: float, elapsed: float, budget_seconds: float | None) -> int:
    """The views the classifier phase will encode when it starts after `elapsed` seconds (another_view, view
    after view): what `cnnlab plan` predicts."""
    views = 0
    while another_view(views, requested, seconds_per_view, elapsed + views * seconds_per_view, budget_seconds):
        views += 1
    return views


def describe(budget_seconds: float, result: Plan) -> str:
    """One line for the log."""
    speed = result.speed
    measured = f"{1 / speed.full:.0f} img/s at {speed.full_side} px"
    if speed.small_side < speed.full_side:
        measured += f", {1 / speed.small:.0f} at {speed.small_side} px"
    return (f"time budget {format_duration(budget_seconds)}: {result.total_steps} steps ({result.epochs} epoch"
            f"{'s' if result.epochs != 1 else ''}) planned from the speed measured: {measured}")


@dataclass
class Budget:
    """A run's time budget while it trains: the seconds, when it started (time.monotonic) and its plan."""

    seconds: float
    started: float
    plan: Plan
    sides: Callable[[int], list[int]]
    """The progressive-resizing sides of a run of so many epochs (what the plan assumed)."""

    val_images: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def reserve(self) -> float:
        """Seconds to keep at the end: one validation pass and the finish. Training that runs slower than
        planned stops when only this is left, so the run still ends on time."""
        return self.val_images * self.plan.speed.full * VALIDATION_SHARE + FINISH_SECONDS
