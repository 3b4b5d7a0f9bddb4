"""`cnnlab plan`: will a run fit in memory, and how long will it take? Measured before any training.

It takes `train`'s options and measures what that run would do, on this machine:

    memory  one training step at the run's batch size and side (cnnlab.training.memory): parameters,
            gradients, optimizer state, the weight average and the loader's batches counted from the tensors,
            the activations measured with real steps on synthetic batches; compared with the free memory
    speed   full training steps (reading the decoded images, augmentation, forward, backward, update) timed on
            a sample of the training images, exactly as `--time` measures before it plans
            (cnnlab.training.budget), at the full side and at progressive resizing's smallest
    time    an epoch and the requested epochs from that speed, with the arithmetic `--time` plans with
            (budget.epoch_seconds: training, validation, each epoch's files); with --time, the epochs that fit
    cache   the decoded-image cache's size on disk (data.cache.estimate_bytes), how many images a store holds
            already, and how long decoding the others takes (the sample's files, decoded one after another,
            timed; the build runs on every core)

With --batch-size auto the batch is the one `train` would pick (memory.choose_batch_size). A requested batch
that does not fit is reported with the largest one that does; a side where not even batch 1 fits is an error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch

from cnnlab.config import Help, TrainConfig, config_from_file, format_duration, parse_duration
from cnnlab.data.cache import POOL_MIN_FILES, cache_root, choose_mode, describe_resolution, estimate_bytes, \
    open_cache, stored_images
from cnnlab.data.folders import DatasetSplits
from cnnlab.data.images import image_size
from cnnlab.data.loaders import PREFETCH_FACTOR, make_loader
from cnnlab.data.tiles import tile_draws, tile_positions
from cnnlab.errors import CnnlabError
from cnnlab.html import escape
from cnnlab.training.budget import FINISH_SECONDS, MEASURE_BATCHES, VALIDATION_SHARE, Plan, Speed, \
    epoch_seconds, head_views, measure_speed
from cnnlab.training.budget import plan as plan_budget
from cnnlab.training.memory import MARGIN, BatchChoice, MemoryProbe, OutOfMemory, StepMemory, choose_batch_size, \
    format_bytes, free_memory, step_spec
from cnnlab.training.optim import epoch_sizes
from cnnlab.training.transfer import encode_seconds_per_image, fit_seconds
from cnnlab.training.setup import build_model, decode_resolution, environment, find_splits, input_pipeline, \
    loss_function, make_datasets, model_options, preprocessing_of, resolve_balance, step_inputs

# Distinct training files the speed is measured on: fewer than the cache's POOL_MIN_FILES, so they are decoded
# in this process one after another and their time is the decoder's per file.
SAMPLE_FILES = POOL_MIN_FILES - 1


@dataclass(frozen=True)
class CachePlan:
    """The decoded-image cache a run would use: mode, size on disk, what is cached already, time to build."""

    mode: str
    """disk, ram or off (what --cache resolves to)."""
    why: str
    resolution: str
    """'short side 147' or 'scale 0.5'."""
    bytes: int
    images: int
    """Files of every split the run reads."""
    cached: int
    """Of them, already in a current disk store."""
    decode_seconds: float
    """Per file, measured on the sample (0 when not measured: --cache off)."""
    cores: int

    @property
    def build_seconds(self) -> float:
        """Decoding the files not cached yet, on every core (as the cache builds)."""
        return 0.0 if self.mode == "off" else (self.images - self.cached) * self.decode_seconds / self.cores


@dataclass
class TrainingPlan:
    """What `cnnlab plan` measured and computed; describe() prints it."""

    config: TrainConfig
    """The options, with --batch-size auto resolved to the batch the plan is for."""
    data_name: str
    classes: int
    train_images: int
    val_images: int
    device: str
    precision: str
    workers: int
    requested_batch: int | str
    step: StepMemory | None
    """The step at the requested batch; None when it could not even allocate."""
    free_bytes: int
    """Free memory on the device (on a CPU less a ram cache still to be built)."""
    choice: BatchChoice | None
    """The largest batch that fits, when searched (--batch-size auto, or a requested batch that does not fit)."""
    speed: Speed
    network_seconds_per_image: float
    """The network alone, on synthetic batches at the full side."""
    val_passes: float
    """Validation images per epoch, or with --tile the windows slid over them."""
    train_passes: float
    """Training images per epoch, or with --tile the tiles an epoch draws (the tiles each image's area holds)."""
    sides: list[int]
    """Each epoch's training side (progressive resizing)."""
    cache: CachePlan
    budget: Plan | None = None
    """With --time: the plan `train` would make."""
    head_views: int = 0
    """Views per training image the classifier phase encodes (--head-views; with --time, those that fit)."""
    head_seconds: float = 0.0
    """The classifier phase: encoding those views once, and the classifier's fit."""

    @property
    def batch_size(self) -> int:
        """The batch the speed and time are for."""
        return self.config.batch_size

    @property
    def fits(self) -> bool:
        """The requested (or chosen) batch's step fits MARGIN of the free memory."""
        return self.step is not None and self.step.peak_bytes <= MARGIN * self.free_bytes

    def epoch_seconds(self, side: int | None = None) -> float:
        """One epoch at `side` (default: the full side): training, validation, its files."""
        return epoch_seconds(side or self.config.img_size, self.speed, self.train_passes, self.val_passes)

    @property
    def run_seconds(self) -> float:
        """The requested epochs and the finish, after the cache is built."""
        return self.head_seconds + sum(self.epoch_seconds(side) for side in self.sides) + FINISH_SECONDS

    def describe(self) -> str:
        """The plan as printed by `cnnlab plan`."""
        return _describe(self)

    def _repr_html_(self) -> str:
        """In a notebook: the plan as `cnnlab plan` prints it (its lines line up in a fixed-width font)."""
        return f"<pre>{escape(_describe(self))}</pre>"


def plan(config: TrainConfig | None = None, *,
         config_file: Annotated[str | None, Help("Read options from this YAML file, as train does; flags override "
                                                 "it.", flag="--config")] = None,
         verbose: bool = True, **options) -> TrainingPlan:
    """Before training: will it fit, and how long will it take? Takes train's options and measures that run's
    training step (memory: parameters, activations, optimizer state; speed) on this machine, then prints the
    per-step memory against the free memory, images/s, the time of an epoch and of --epochs (or what fits in
    --time), and the image cache's size on disk. --batch-size auto shows the batch train would pick.

    `config` (or TrainConfig fields as keywords, as `train` takes them; or `config_file`) is the run to plan."""
    if config is None:
        config = TrainConfig(**((config_from_file(config_file) if config_file else {}) | options))
    env = environment(config, join=False)  # the stages training runs first (cnnlab.training.setup)
    device, precision, workers = env.device, env.precision, env.workers
    splits = find_splits(config)
    train_images = len(splits.splits["train"])
    model = build_model(config, len(splits.classes))  # the minimum-size check, one clear line
    cache = _cache_plan(config, splits)
    free = free_memory(device) - (cache.bytes if cache.mode == "ram" and device.type == "cpu" else 0)
    _log(verbose, f"plan: measuring a training step of {config.model} at {config.img_size} px on {device} "
                  f"({format_bytes(free)} free)")
    spec = step_spec(config, len(splits.classes), precision, model_options(config), workers)
    # a bag run's step trains --bag-tiles tiles of each image with gradients: measured as a step of those tiles
    per_image = config.bag_tiles if preprocessing_of(config).bags else 1
    with MemoryProbe(spec, device, free) as probe:
        step, choice, tiles = _memory(probe, config.batch_size if config.batch_size == "auto" else
                                      config.batch_size * per_image, train_images * per_image)
    batch = max(1, tiles // per_image)
    runnable = dataclasses.replace(config, batch_size=batch)  # the requested batch, or the largest that fits
    network = (step if batch == config.batch_size else choice.step).seconds_per_image
    _log(verbose, f"plan: timing training steps of batch {batch} on a sample of {min(SAMPLE_FILES, train_images)} "
                  "training images")
    model = model.to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    speed, decode_seconds, windows, draws, encode_seconds = _measure_speed(runnable, splits, model, device, precision,
                                                                           cache.mode, workers)
    cache = dataclasses.replace(cache, decode_seconds=decode_seconds)
    val_passes = len(splits.splits["val"]) * windows
    train_passes = train_images * draws
    sides = epoch_sizes(config.epochs, config.img_size, model.min_input_size, config.progressive)
    result = TrainingPlan(config=runnable, data_name=Path(splits.root).name, classes=len(splits.classes),
                          train_images=train_images, val_images=len(splits.splits["val"]), device=str(device),
                          precision=precision.name, workers=workers, requested_batch=config.batch_size, step=step,
                          free_bytes=free, choice=choice, speed=speed, network_seconds_per_image=network,
                          val_passes=val_passes, train_passes=train_passes, sides=sides, cache=cache)
    if config.time:
        def sides_of(epochs: int) -> list[int]:
            return epoch_sizes(epochs, config.img_size, model.min_input_size, config.progressive)
        # before it plans, a --time run builds its cache and times MEASURE_BATCHES + 1 batches at each side
        setup = cache.build_seconds + (MEASURE_BATCHES + 1) * batch * (speed.full + speed.small)
        result.head_views, result.head_seconds, result.budget = budget_with_head(
            parse_duration(config.time), setup, config.head_views, encode_seconds, speed,
            math.ceil(train_passes / batch), batch, round(train_passes), val_passes, sides_of)
    elif config.head_views:
        result.head_views = config.head_views
        result.head_seconds = head_seconds(config.head_views, encode_seconds, train_images)
    return result


def head_seconds(views: int, encode_seconds: float, train_images: int) -> float:
    """The classifier phase (cnnlab.training.transfer): `views` forward passes over the training images, then the
    classifier's fit on the cached features."""
    return views * train_images * encode_seconds + fit_seconds(views * train_images) if views else 0.0


def budget_with_head(budget_seconds: float, setup: float, requested_views: int, encode_seconds: float, speed: Speed,
                     steps_per_epoch: int, batch_size: int, train_images: int, val_images: float,
                     sides) -> tuple[int, float, Plan]:
    """A --time run's two phases, as `train` plans them: the classifier phase's views that fit its share of the
    budget after `setup` (budget.head_views), its seconds, then the fine-tuning steps that fit what is left."""
    per_view = train_images * encode_seconds
    views = head_views(requested_views, per_view, setup, budget_seconds)
    seconds = head_seconds(views, encode_seconds, train_images)
    return views, seconds, plan_budget(budget_seconds, setup + seconds, speed, steps_per_epoch, batch_size,
                                       train_images, val_images, sides)


def _memory(probe: MemoryProbe, requested: int | str, train_images: int
            ) -> tuple[StepMemory | None, BatchChoice | None, int]:
    """(the step at the requested batch, None where it could not allocate; the largest batch that fits, when asked
    for (auto) or needed (the requested one does not fit); the batch the speed is measured at)."""
    if requested == "auto":
        choice = choose_batch_size(probe, train_images)
        return choice.step, choice, choice.batch_size
    try:
        step = probe.measure(requested)
    except OutOfMemory:
        step = None
    if step is not None and step.peak_bytes <= MARGIN * probe.free:
        return step, None, requested
    choice = choose_batch_size(probe, train_images)  # not even batch 1: the error, one line
    return step, choice, choice.batch_size


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def _cache_plan(config: TrainConfig, splits: DatasetSplits) -> CachePlan:
    """What --cache resolves to for this folder, the store's size, and how much of it exists already."""
    paths = [sample.path for samples in splits.splits.values() for sample in samples]
    size = decode_resolution(config)
    stored = stored_images(paths, size, config.cache_dir, config.max_pixels) if config.cache != "off" else 0
    if config.cache == "off":
        mode, why = "off", "--cache off: every epoch decodes the files"
    elif config.cache == "auto" and stored:
        mode, why = "disk", "a store for this folder exists"
    elif config.cache == "auto":
        mode, why = choose_mode(paths, size, cache_root(config.cache_dir))
    else:
        mode, why = config.cache, f"--cache {config.cache}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return CachePlan(mode, why, describe_resolution(size), estimate_bytes(paths, size), len(paths),
                     stored if mode == "disk" else 0, 0.0, cores)


def _measure_speed(config: TrainConfig, splits: DatasetSplits, model, device: torch.device, precision,
                   cache_mode: str, workers: int) -> tuple[Speed, float, float, float, float]:
    """(the Speed of full training steps on a sample of the training images, seconds to decode one of its files
    for the cache, validation passes per image: 1, or with --tile the windows slid over an image, training
    draws per image: 1, or with --tile the tiles an epoch draws from an image, the last two averaged over the
    sample; and with --head-views the classifier phase's seconds per image and view, else 0)."""
    train = splits.splits["train"]
    files = random.Random(config.seed).sample(train, min(SAMPLE_FILES, len(train)))
    paths = [sample.path for sample in files]
    started = time.perf_counter()
    cache = None
    if cache_mode != "off":  # the run reads decoded images from its cache: so does the sample
        cache = open_cache(paths, decode_resolution(config), "ram", cache_dir=config.cache_dir,
                           max_pixels=config.max_pixels, verbose=False)
    decode_seconds = (time.perf_counter() - started) / len(files) if cache is not None else 0.0
    # the sample read over and over, as many images as the measurement takes
    count = (MEASURE_BATCHES + 1) * config.batch_size
    view = DatasetSplits(splits.root, splits.classes, {"train": [files[i % len(files)] for i in range(count)]},
                         "a sample of the training images")
    dataset = make_datasets(view, config, cache)["train"]
    loader = make_loader(dataset, config.batch_size, workers, train=True, seed=config.seed,
                         pin_memory=device.type == "cuda")
    counts = list(splits.counts()["train"].values())
    loss_fn = loss_function(config, resolve_balance(config.balance, counts), counts).to(device)
    smallest = min(epoch_sizes(100, config.img_size, model.min_input_size, config.progressive))
    pipeline = input_pipeline(config, device, precision)
    speed = measure_speed(model, loader, pipeline, loss_fn, config.img_size, smallest, keep_scale=bool(config.tile),
                          inputs=step_inputs(config, pipeline, len(splits.classes)))
    encode = encode_seconds_per_image(model, loader, pipeline, MEASURE_BATCHES) if config.head_views else 0.0
    windows, draws = 1.0, 1.0
    if config.tile and not preprocessing_of(config).bags:  # a bag run's speed is per image (its bag) already
        shapes = [tuple(int(v) for v in cache.shapes[i]) for i in range(len(cache)) if i not in cache.problems] \
            if cache is not None else [_scaled_size(path, config) for path in paths]
        shapes = [shape for shape in shapes if shape is not None]
        windows = sum(len(tile_positions(h, w, config.tile, config.tile_overlap)) for h, w in shapes) / \
            max(len(shapes), 1)
        draws = sum(tile_draws(h, w, config.tile) for h, w in shapes) / max(len(shapes), 1)
    return speed, decode_seconds, windows, draws, encode


def _scaled_size(path: str, config: TrainConfig) -> tuple[int, int] | None:
    """(height, width) of an image at --scale, from its header; None if unreadable."""
    try:
        width, height = image_size(path, config.max_pixels)
    except CnnlabError:
        return None
    return round(height * config.scale), round(width * config.scale)


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    """4.2s, 35s, 4m10s."""
    return f"{seconds:.1f}s" if seconds < 9.95 else format_duration(seconds)


def _row(name: str, text: str) -> str:
    return f"  {name:<17} {text}"


def _describe(p: TrainingPlan) -> str:
    config, step, speed, cache = p.config, p.step, p.speed, p.cache
    side = f"{config.tile} px tiles at scale {config.scale:g}" if config.tile else f"{config.img_size} px"
    auto = " (auto)" if p.requested_batch == "auto" else ""
    lines = [f"plan: {config.model} on {p.data_name} ({p.train_images:,} train / {p.val_images:,} val images, "
             f"{p.classes} classes), {side}, batch {config.batch_size}{auto}, {p.device} {p.precision}"]
    if step is None:
        lines.append(f"memory: batch {p.requested_batch} could not even allocate its training step in the "
                     f"{format_bytes(p.free_bytes)} free")
    else:
        optimizer = "AdamW" if config.optimizer == "adamw" else "SGD momentum"
        average = f", weight average {format_bytes(step.average_bytes)}" if step.average_bytes else ""
        share = step.peak_bytes / max(p.free_bytes, 1)
        bags = (f" (bags: {config.batch_size} images x --bag-tiles {config.bag_tiles} kept tiles)"
                if preprocessing_of(config).bags else "")
        lines += [f"memory of a training step at batch {step.batch_size}{bags} (measured: {step.method}):",
                  _row("parameters", f"{step.parameters:,} = {format_bytes(step.parameter_bytes)}, gradients "
                       f"{format_bytes(step.gradient_bytes)}, {optimizer} state "
                       f"{format_bytes(step.optimizer_bytes)}{average}"),
                  _row("loader batches", f"{format_bytes(step.loader_bytes)} ({p.workers} worker"
                       f"{'s' if p.workers != 1 else ''} x {PREFETCH_FACTOR} uint8 batches)"),
                  _row("activations", f"{format_bytes(step.activation_bytes)} "
                       f"({format_bytes(step.activations_per_image)} per image)"),
                  _row("first step", f"{format_bytes(step.kernel_bytes)} (kernels, their caches and workspaces: "
                       "once per process)"),
                  _row("peak", f"{format_bytes(step.peak_bytes)} = {share:.1%} of the {format_bytes(p.free_bytes)} "
                       f"free: " + ("fits" if p.fits else "does not fit") + f" (the limit is {MARGIN:.0%})")]
    if p.choice is not None:
        choice = p.choice
        why = f"the cap: {choice.cap_reason}" if choice.batch_size == choice.cap else \
            f"batch {2 * choice.batch_size} would not fit"
        lines.append(_row("largest batch", f"{choice.batch_size} ({format_bytes(choice.step.peak_bytes)} a step; "
                          f"{why})"))
    measured = f"{1 / speed.full:,.0f} img/s at {speed.full_side} px"
    if speed.small_side < speed.full_side:
        measured += f", {1 / speed.small:,.0f} img/s at {speed.small_side} px"
    lines += [f"speed at batch {config.batch_size}:",
              _row("training", f"{measured} (reading, augmenting, forward, backward, update)")]
    if p.device.startswith("cuda"):  # on a CPU the measuring child maps every large block afresh: not its speed
        lines.append(_row("network alone", f"{1 / p.network_seconds_per_image:,.0f} img/s at {config.img_size} px "
                          "(synthetic batches, no reading: its fastest step)"))
    tiled = config.tile and not preprocessing_of(config).bags  # a bag run's images are its samples
    windows = f" ({p.val_passes:,.0f} windows)" if tiled else ""
    tiles = f" ({p.train_passes:,.0f} tiles)" if tiled else ""
    progressive = f", progressive resizing from {min(p.sides)} px" if min(p.sides) < config.img_size else ""
    epochs = f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"
    lines += ["time:",
              _row("an epoch", f"{_duration(p.epoch_seconds())} at {config.img_size} px (training "
                   f"{_duration(p.train_passes * speed.full)}{tiles}, validating {p.val_images:,} images{windows} "
                   f"{_duration(p.val_passes * speed.full * VALIDATION_SHARE)})")]
    if p.head_views:
        lines.append(_row("classifier phase", f"{_duration(p.head_seconds)} ({p.head_views} view"
                          f"{'s' if p.head_views != 1 else ''} of each of the {p.train_images:,} training images "
                          "encoded once, then the classifier fit on them)"))
    if p.budget is not None:  # the question asked was "what fits in T", not "how long do --epochs take"
        fitted = f"{p.budget.epochs} epoch{'s' if p.budget.epochs != 1 else ''}"
        lines.append(_row(f"--time {config.time}", f"{fitted} fit ({p.budget.total_steps:,} steps){progressive}, "
                          "the finish included"))
    else:
        lines.append(_row(epochs, f"{_duration(p.run_seconds)}{progressive}, with the finish"))
    if cache.mode == "off":
        lines.append(f"cache: off ({cache.why}); a store would take {format_bytes(cache.bytes)}")
    else:
        where = "on disk" if cache.mode == "disk" else "in memory"
        built = (f"all {cache.images:,} images cached already" if cache.cached >= cache.images else
                 f"{cache.images - cache.cached:,} of {cache.images:,} images to decode first: about "
                 f"{_duration(cache.build_seconds)} ({1000 * cache.decode_seconds:.0f} ms a file, "
                 f"{cache.cores} core{'s' if cache.cores != 1 else ''})")
        lines.append(f"cache: {cache.mode} ({cache.why}), {format_bytes(cache.bytes)} {where} at {cache.resolution}; "
                     f"{built}")
    if p.budget is not None:
        answer = f"{p.budget.epochs} epoch{'s' if p.budget.epochs != 1 else ''} fit in --time {config.time}"
    else:
        answer = f"{epochs} take about {_duration(p.run_seconds + cache.build_seconds)}"
    if p.fits:
        verdict = f"fits in memory; {answer}"
    else:
        verdict = (f"batch {p.requested_batch} does not fit in {MARGIN:.0%} of the free memory; with --batch-size "
                   f"{p.choice.batch_size} (or auto) {answer}")
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)


def show(result: TrainingPlan) -> None:
    """The plan as `cnnlab plan` prints it."""
    print(result.describe(), flush=True)
