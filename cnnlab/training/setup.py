"""Everything a training run needs before its first step, built from a TrainConfig: `prepare(config)`.

    run = prepare(config)   # data, model, loaders, optimizer, schedule, run folder (this module)
    train(run)              # the epoch loop (cnnlab.training.loop)
    finish(run)             # verdict, evaluation, report (cnnlab.commands.train)

prepare runs named stages, each a plain function of the config and the stages before it:

    environment(config)                    process group, device, precision, loader workers
    find_splits, prepare_data              splits, decode cache, datasets, tiles per image
    prepare_model                          the model (pretrained or --weights), on its device and memory format
    make_loaders                           this process's loaders (balance, shares of the batch)
    run_folder                             the new run's folder (a run failing before its first checkpoint
                                           leaves none behind: discard_unstarted)
    classifier_first                       --head-views (default with --pretrained): the classifier fitted alone on
                                           features computed once per image and view (cnnlab.training.transfer)
    prepare_optimisation                   learning rate, the --time plan, optimizer, schedule, weight average
    restore                                --resume: the checkpoint's state

plan, lr-find, augment-preview and the memory probe call the same stages, so they see what training sees.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from cnnlab.config import TrainConfig, parse_duration
from cnnlab.data.cache import CachedImages, open_cache
from cnnlab.data.bags import BagDataset
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import DatasetSplits, find_samples
from cnnlab.data.augment import for_preset
from cnnlab.data.findings import IMBALANCE_RATIO, describe_outliers, quick_outliers
from cnnlab.data.loaders import make_loader, samples_per_epoch
from cnnlab.data.images import image_size
from cnnlab.data.tiles import check_fits, tile_draws
from cnnlab.data.transforms import Preprocessing, training_transform
from cnnlab.data.unreadable import UnreadableImages
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, input_normalization, tiled_options
from cnnlab.models.weights import load_start_weights
from cnnlab.training import distributed
from cnnlab.training.device import Precision, compile_model, default_workers, resolve_device, resolve_precision
from cnnlab.training.distributed import SINGLE, World
from cnnlab.training.budget import Budget, another_view, measure_speed, plan
from cnnlab.training.budget import describe as describe_plan
from cnnlab.training.ema import WeightAverage, decay_for
from cnnlab.training.bags import BagInputs
from cnnlab.training.forward import ImageInputs, InputPipeline, Logits, window_batch
from cnnlab.training.lr_find import suggest_lr_for_config
from cnnlab.training.memory import MemoryProbe, choose_batch_size, step_spec
from cnnlab.training.optim import DEFAULT_LR, build_optimizer, build_scheduler, epoch_sizes
from cnnlab.training.record import (discard_unstarted, model_metadata, new_run_dir, write_classes, write_config,
                                   write_dataset, write_model)
from cnnlab.training.tracking import check_trackers, open_trackers
from cnnlab.training.state import LoopState, TrainingCheckpoint, restore_training
from cnnlab.training.transfer import HeadPhase, train_classifier_first


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (weights initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_options(config: TrainConfig) -> dict:
    """Keyword arguments for create_model, as stored in model.json (never `pretrained`: the weights
    come from the run's own files when the model is rebuilt)."""
    options = {"dropout": config.dropout, "img_size": config.img_size}
    if config.tile:  # e.g. resnet9's max-and-average pooling, for classes decided by small things anywhere in a tile
        options.update(tiled_options(config.model))
    options.update(config.model_options)
    if preprocessing_of(config).bags:  # the model is the tile encoder of an attention MIL classifier
        options["bag"] = True
    return options


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """create_model with the run's options, checked against the image size."""
    extra = {"pretrained": True} if config.pretrained else {}
    model = create_model(config.model, num_classes, **model_options(config), **extra)
    minimum = model.min_input_size
    if config.img_size < minimum:
        raise CnnlabError(f"--img-size {config.img_size} is too small for model '{config.model}', which "
                          f"halves the image {int(math.log2(minimum))} times; use --img-size {minimum} or more")
    return model


def make_datasets(splits: DatasetSplits, config: TrainConfig, cache: CachedImages | None = None
                  ) -> dict[str, ImageDataset]:
    """Training set with the preset's per-image transform; val/test with the run's evaluation view (resized and
    cropped, or whole images at the tiles' scale). With `cache` (open_cache over every split's files), images come
    from it instead of the files."""
    view = preprocessing_of(config)
    # bag runs read whole images in every split: the training step cuts and augments the tiles it keeps
    kind = BagDataset if view.bags else ImageDataset
    datasets = {}
    for split, samples in splits.splits.items():
        transform = training_transform(view, config.augment, config.augment_on) if split == "train" \
            and not view.bags else view.eval_transform()
        source = cache.select([sample.path for sample in samples]) if cache is not None else None
        datasets[split] = kind(samples, transform, view.resolution, max_pixels=config.max_pixels, source=source)
    return datasets


def decode_resolution(config: TrainConfig) -> int | float:
    """What the cache stores: the short side the crops start from, or for tiled runs the pixel scale."""
    return preprocessing_of(config).resolution


def preprocessing_of(config: TrainConfig) -> Preprocessing:
    """The preprocessing record of a run trained with `config`, normalised as its model expects."""
    mean, std = input_normalization(config.model)  # ImageNet's for most; [-1, 1] for the EfficientNet-Lite weights
    if config.tile:
        record = Preprocessing.for_tiles(config.tile, float(config.scale), config.tile_overlap, config.aggregate,
                                         config.bag_tiles)
    else:
        record = Preprocessing.for_size(config.img_size)
    return dataclasses.replace(record, mean=mean, std=std)


def check_tiles_fit(splits: DatasetSplits, config: TrainConfig, cache: CachedImages | None) -> dict[str, tuple[int, int]]:
    """Tiled runs: every image at --scale must hold one tile (a clear error naming the first that does not).
    Returns each readable image's (height, width) at --scale, by path."""
    samples = [sample for split_samples in splits.splits.values() for sample in split_samples]
    paths = [sample.path for sample in samples]
    if cache is not None:
        view = cache.select(paths)
        readable = [i for i in range(len(paths)) if i not in view.problems]
        sizes = [tuple(int(v) for v in view.shapes[i]) for i in readable]
        kept = [paths[i] for i in readable]
    else:
        sizes, kept = [], []
        for path in paths:
            try:
                width, height = image_size(path, config.max_pixels)
            except CnnlabError:
                continue  # unreadable: skipped and counted as training reads it
            sizes.append((round(height * config.scale), round(width * config.scale)))
            kept.append(path)
    check_fits(sizes, kept, config.tile, config.scale)
    return dict(zip(kept, sizes))


def tile_draws_per_sample(samples: list, sizes: dict[str, tuple[int, int]], tile: int) -> torch.Tensor:
    """Tiles an epoch draws from each training image (cnnlab.data.tiles.tile_draws; 1 for an unreadable one)."""
    return torch.tensor([tile_draws(*sizes[sample.path], tile) if sample.path in sizes else 1 for sample in samples])


def open_training_cache(splits: DatasetSplits, config: TrainConfig, one_pass: bool = False,
                        verbose: bool = True) -> CachedImages | None:
    """Decode every file once, at the size the transforms start from; later epochs read uint8 pixels.
    `one_pass` (a look at a few images): use a cache that exists, never build one."""
    paths = [sample.path for samples in splits.splits.values() for sample in samples]
    return open_cache(paths, decode_resolution(config), config.cache, cache_dir=config.cache_dir,
                      max_pixels=config.max_pixels, one_pass=one_pass, verbose=verbose)


def input_pipeline(config: TrainConfig, device: torch.device, precision: Precision) -> InputPipeline:
    """The batch's way from the loader to the model: on the device, normalised, augmented when training."""
    mean, std = input_normalization(config.model)  # as preprocessing_of records it for eval, predict and export
    # bag runs augment the tiles they keep on the device: their workers hand over whole images
    where = "device" if preprocessing_of(config).bags else config.augment_on
    return InputPipeline(device, precision, mean=mean, std=std, augment=for_preset(config.augment, where))


def step_inputs(config: TrainConfig, pipeline: InputPipeline, num_classes: int) -> ImageInputs | BagInputs:
    """How a training batch becomes the model's input, chosen once from the run's view: crops or tiles
    (ImageInputs), or whole images as bags of their top-scoring tiles (BagInputs, Iterative Patch Selection)."""
    view = preprocessing_of(config)
    if view.bags:
        # the scoring pass is the sliding window's forward pass without gradients: its batching rule by default.
        # Its memory stays under the training part's (the peak was 1189 / 1214 / 1235 MB with chunks of 4, 16 and 64
        # tiles at M 16, 2048 px images: benchmarks/results/bag_step.md), so the chunk is chosen for speed, as the
        # window's is.
        return BagInputs(pipeline, view.tile, view.overlap, config.bag_tiles,
                         config.score_batch or window_batch(view.tile), config.bag_warmup)
    return ImageInputs(pipeline, keep_scale=view.tiled, num_classes=num_classes, mixup=config.mixup,
                       cutmix=config.cutmix)


@dataclass(frozen=True)
class Balance:
    """How a run treats class imbalance: the mode used, and why (logged and recorded)."""

    mode: str  # weights, sampler or off
    ratio: float  # images of the largest class / of the smallest
    note: str


def resolve_balance(requested: str, counts: list[int]) -> Balance:
    """What --balance means for these training counts (one per class); auto acts from IMBALANCE_RATIO on,
    the ratio at which the data check warns too."""
    ratio = max(counts) / max(min(counts), 1)
    if requested == "auto":
        mode = "weights" if ratio >= IMBALANCE_RATIO else "off"
        why = (f"the largest class has {ratio:.1f}x the images of the smallest (>= {IMBALANCE_RATIO:g}x): the loss "
               "is weighted by inverse class frequency" if mode == "weights"
               else f"classes within {IMBALANCE_RATIO:g}x of each other ({ratio:.1f}x): no reweighting")
        return Balance(mode, ratio, f"balance auto: {why}")
    return Balance(requested, ratio, f"balance {requested} (largest class {ratio:.1f}x the smallest)")


def class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights (K,), averaging 1 over the images: N / (K * n_c)."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    return counts_t.sum() / (len(counts) * counts_t)


def loss_function(config: TrainConfig, balance: Balance, counts: list[int]) -> nn.Module:
    """Cross-entropy with the run's label smoothing and, with balance 'weights', class weights."""
    weight = class_weights(counts) if balance.mode == "weights" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


@dataclass
class TrainingParts:
    """What a training step uses: `net` runs the forward pass (compiled if asked), `model` holds the
    weights that are saved (its state_dict keys carry no torch.compile wrapper prefix)."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    pipeline: InputPipeline
    average: WeightAverage | None = None
    """The weight average (--ema): what is validated and saved; None without --ema."""
    validation_net: nn.Module | None = None
    """What validates without a weight average: `net` (compiled if asked), or with several processes the bare
    model (each process scores its own share, so DDP's collectives must stay out of it)."""
    inputs: ImageInputs | BagInputs | None = None
    """How a training batch becomes the net's input (step_inputs); None: ImageInputs with the pipeline alone."""

    def step_inputs(self, batch, epoch: int, side: int) -> tuple[tuple, torch.Tensor | None]:
        """(the net's positional inputs, soft targets or None) for a training batch (step_inputs)."""
        inputs = self.inputs or ImageInputs(self.pipeline, keep_scale=False, num_classes=0)
        return inputs(self.model, batch, epoch, side)

    @property
    def evaluated(self) -> nn.Module:
        """The model validation runs: the weight average, or the model itself."""
        if self.average is not None:
            return self.average.model
        return self.validation_net if self.validation_net is not None else self.net

    @property
    def saved_model(self) -> nn.Module:
        """The model best/last.safetensors hold (its state_dict keys carry no torch.compile prefix)."""
        return self.average.model if self.average is not None else self.model

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def precision(self) -> Precision:
        return self.pipeline.precision


@dataclass
class Run:
    """A training run: its resolved options, folder, data, training parts, loaders and loop state."""

    config: TrainConfig
    """The options with every 'auto' resolved (written as config.yaml, stored in each checkpoint)."""
    run_dir: Path
    splits: DatasetSplits
    metadata: dict
    """model.json, also inside each .safetensors."""
    preprocessing: Preprocessing
    parts: TrainingParts
    train_loader: DataLoader
    val_loader: DataLoader
    unreadable: UnreadableImages
    dataset_info: dict
    """dataset.json, without the unreadable files."""
    state: LoopState = field(default_factory=LoopState)
    best_val: Logits | None = None
    """Validation logits of the best epoch (what eval_val.json is computed from at the end)."""
    verbose: bool = True
    reported_unreadable: dict = field(default_factory=dict)
    """Unreadable-image counts last written to dataset.json."""
    budget: Budget | None = None
    """With --time: the budget and its plan (None otherwise, and in a resumed run, which follows its plan)."""
    world: World = SINGLE
    """This process's place among the training processes (rank 0 writes the run folder)."""
    created_folder: bool = False
    """Whether this run made its folder (a run failing before its first checkpoint then removes it)."""
    trackers: list = field(default_factory=list)
    """With --log: the open TensorBoard/MLflow trackers (rank 0), each epoch logged to them (cnnlab.training.tracking)."""

    @property
    def classes(self) -> list[str]:
        return self.splits.classes

    def log(self, message: str) -> None:
        """A line on stderr when verbose."""
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def write_dataset_info(self) -> None:
        """dataset.json: splits, counts and the unreadable files found so far (rank 0 only)."""
        if not self.world.is_main:
            return
        report = self.unreadable.report()
        write_dataset(self.run_dir, self.dataset_info | ({"unreadable": report} if report else {}))
        self.reported_unreadable = self.unreadable.count()


def plan_budget(config: TrainConfig, model: nn.Module, loader: DataLoader, pipeline: InputPipeline,
                loss_fn: nn.Module, val_images: int, started: float, verbose: bool,
                inputs: ImageInputs | BagInputs | None = None) -> Budget:
    """Time a few real training steps and plan the steps that fit config.time (cnnlab.training.budget)."""
    seconds = parse_duration(config.time)

    def sides(epochs: int) -> list[int]:
        return epoch_sizes(epochs, config.img_size, model.min_input_size, config.progressive)
    smallest = min(sides(100))  # progressive resizing's first side (the full side when it is off)
    speed = measure_speed(model, loader, pipeline, loss_fn, config.img_size, smallest,
                          keep_scale=bool(config.tile), inputs=inputs)
    result = plan(seconds, time.monotonic() - started, speed, len(loader), config.batch_size,
                  samples_per_epoch(loader), val_images, sides)
    if verbose:
        print(describe_plan(seconds, result), file=sys.stderr, flush=True)
    return Budget(seconds, started, result, sides, val_images)


def auto_batch_size(config: TrainConfig, num_classes: int, device: torch.device, precision: Precision,
                    train_images: int, workers: int, verbose: bool) -> int:
    """--batch-size auto: the largest batch whose measured training step fits the free memory
    (cnnlab.training.memory.choose_batch_size). A bag run's step trains --bag-tiles tiles of each image with
    gradients (its scoring pass holds no gradients, a batch of at most score_batch tiles): it is measured as a step
    of tiles, and the batch is the images whose kept tiles that step holds."""
    per_image = config.bag_tiles if preprocessing_of(config).bags else 1
    spec = step_spec(config, num_classes, precision, model_options(config), workers)
    with MemoryProbe(spec, device) as probe:
        choice = choose_batch_size(probe, train_images * per_image)
    batch = max(1, choice.batch_size // per_image)
    if verbose:
        print(choice.describe() + (f"; in bags of --bag-tiles {per_image}: {batch} images a step"
                                   if per_image > 1 else ""), file=sys.stderr, flush=True)
    return batch


def shared_auto_batch_size(config: TrainConfig, num_classes: int, device: torch.device, precision: Precision,
                           train_images: int, workers: int, world: World, verbose: bool) -> int:
    """--batch-size auto with several processes: rank 0 measures one process's step, every process gets that
    share (each GPU has its own memory; processes on one CPU share its memory, so each gets an equal part of
    the batch that fits it) and the global batch is the share times the processes."""
    if not world.distributed:
        return auto_batch_size(config, num_classes, device, precision, train_images, workers, verbose)
    share = None
    if world.is_main:
        share = auto_batch_size(config, num_classes, device, precision, train_images // world.world_size, workers,
                                verbose)
        if device.type != "cuda":
            share = max(1, share // int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size)))
    return distributed.broadcast(share) * world.world_size


def open_shared_cache(splits: DatasetSplits, config: TrainConfig, world: World, verbose: bool) -> CachedImages | None:
    """The decoded-image cache, built once: rank 0 builds (or updates) it while the others wait, then they open
    it. A cache kept in memory cannot be shared between processes: each then decodes its own copy."""
    if world.is_main:
        cache = open_training_cache(splits, config, verbose=verbose)
    distributed.barrier()
    mode = distributed.broadcast(cache.mode if world.is_main and cache is not None else "off")
    if not world.is_main:
        cache = open_training_cache(splits, dataclasses.replace(config, cache=mode), verbose=False) \
            if mode != "off" else None
    return cache


@dataclass
class Environment:
    """Where and how a run computes: its place among the training processes, device, number format, workers."""

    world: World
    device: torch.device
    precision: Precision
    workers: int
    """DataLoader worker processes of this process (the machine's cores shared by its training processes)."""


def environment(config: TrainConfig, join: bool = True) -> Environment:
    """Stage 1: the process group (torchrun, Slurm; `join` False: this process alone), device, precision and
    loader workers."""
    world, device_name = distributed.init(config.device) if join else (SINGLE, config.device)
    device = resolve_device(device_name)
    precision = resolve_precision(config.precision, device, config.channels_last)
    workers = default_workers() if config.workers is None else config.workers
    if world.distributed and config.workers is None:  # the machine's cores are shared by its processes
        workers = max(0, workers // int(os.environ.get("LOCAL_WORLD_SIZE", world.world_size)))
    return Environment(world, device, precision, workers)


@dataclass
class RunData:
    """Stage 2's result: the splits, the decode cache over them, a dataset per split and the tiles an epoch
    draws from each training image."""

    splits: DatasetSplits
    cache: CachedImages | None
    datasets: dict[str, ImageDataset]
    draws: torch.Tensor | None = None
    """Tiled runs: tiles an epoch draws from each training image (None: one image each)."""

    @property
    def train_draws(self) -> int:
        """Training samples an epoch draws: images, or with --tile the tiles their areas hold."""
        return int(self.draws.sum()) if self.draws is not None else len(self.datasets["train"])

    @property
    def train_counts(self) -> list[int]:
        """Training images per class, in class order."""
        return list(self.splits.counts()["train"].values())


def find_splits(config: TrainConfig, world: World = SINGLE, classes: list[str] | None = None) -> DatasetSplits:
    """The data folder's (or label file's) splits, checked: every process sees the same, the classes are `classes`
    (a resumed run's) when given, and there are validation images. A label file's rows that cannot be trained on
    are left out with one warning line."""
    if not config.data:
        raise CnnlabError("no data folder given; pass --data DIR (make one with `cnnlab data synth DIR`)")
    splits = find_samples(config.data, val_fraction=config.val_fraction, seed=config.seed)
    skipped = len(splits.skipped_rows)
    if skipped and world.is_main:
        print(f"warning: left out {skipped} row(s) of {splits.root} that cannot be trained on (missing files, empty "
              f"labels, unknown splits, conflicting rows); `cnnlab data check {splits.root}` lists them",
              file=sys.stderr, flush=True)
    if world.distributed:
        distributed.check_agree("classes and images per class of the data folder", splits.counts())
    if classes is not None and classes != splits.classes:
        raise CnnlabError(f"the classes in {splits.root} ({', '.join(splits.classes)}) are not the ones the run "
                          f"was trained on ({', '.join(classes)}); resume with the same data folder")
    if not splits.splits.get("val"):
        where = "rows with split val" if Path(splits.root).is_file() else "a val/ folder"
        raise CnnlabError(f"no validation images in {splits.root}; add {where} or raise --val-fraction")
    return splits


def prepare_data(config: TrainConfig, splits: DatasetSplits, world: World = SINGLE, verbose: bool = True,
                 build_cache: bool = True) -> RunData:
    """Stage 2: the decode cache (built once, by rank 0; `build_cache` False: a cache that exists is used, none is
    built), the datasets of every split and, for tiled runs, the tiles each training image's area holds."""
    if build_cache:
        cache = open_shared_cache(splits, config, world, verbose)
    else:
        cache = open_training_cache(splits, config, one_pass=True, verbose=False)
    draws = None
    if config.tile:  # every image holds a tile; a tiled run draws as many tiles per epoch as its area holds
        sizes = check_tiles_fit(splits, config, cache)
        if not preprocessing_of(config).bags:  # a bag run's epoch: each image once, as one bag
            draws = tile_draws_per_sample(splits.splits["train"], sizes, config.tile)
    return RunData(splits, cache, make_datasets(splits, config, cache), draws)


def make_loaders(config: TrainConfig, data: RunData, env: Environment, balance: "Balance") -> dict[str, DataLoader]:
    """Stage 2, the loaders: this process's share of the global batch; with balance 'sampler', classes drawn
    equally often; tiled runs validate whole images, one per batch (the window cuts each into tiles)."""
    world = env.world
    batch = config.batch_size // world.world_size  # this process's share of the global batch
    counts = data.train_counts
    weights = None
    if balance.mode == "sampler":  # per-sample weights: 1 / (images of the sample's class)
        weights = torch.tensor([1.0 / counts[sample.label] for sample in data.splits.splits["train"]])
    pin = env.device.type == "cuda"
    loaders = {"train": make_loader(data.datasets["train"], batch, env.workers, train=True, seed=config.seed,
                                    pin_memory=pin, rank=world.rank, world_size=world.world_size,
                                    sample_weights=weights, draws=data.draws)}
    if "val" in data.datasets:  # lr-find reads the training split only
        loaders["val"] = make_loader(data.datasets["val"], preprocessing_of(config).images_per_batch(batch * 2),
                                     env.workers, train=False,
                                     seed=config.seed, pin_memory=pin, rank=world.rank, world_size=world.world_size)
    return loaders


def prepare_model(config: TrainConfig, num_classes: int, env: Environment, start_weights: bool = True
                  ) -> tuple[nn.Module, str | None]:
    """Stage 3: the model, seeded, built with the run's options (pretrained if asked), started from --weights when
    `start_weights`, on the device in its memory format; and the note on where its weights came from."""
    seed_everything(config.seed)
    model = build_model(config, num_classes).to(env.device)
    note = load_start_weights(model, config.weights, config.model, num_classes) \
        if config.weights and start_weights else None
    if env.precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, note


@dataclass
class Optimisation:
    """Stage 4's result: the learning rate, the steps planned, optimizer, schedule, scaler and weight average."""

    lr: float
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    average: WeightAverage | None
    budget: Budget | None = None


def prepare_optimisation(config: TrainConfig, model: nn.Module, loaders: dict[str, DataLoader],
                         pipeline: InputPipeline, loss_fn: nn.Module, env: Environment, run_dir: Path,
                         checkpoint: TrainingCheckpoint | None, started: float, verbose: bool,
                         inputs: ImageInputs | BagInputs | None = None) -> Optimisation:
    """Stage 4: the learning rate (--lr auto: the range test), the steps (--epochs, a --time plan, or a resumed
    run's plan), the optimizer, its schedule, the fp16 scaler and the weight average. `inputs`: how a training
    batch becomes the net's input (step_inputs), which the range test and the --time measurement step through."""
    world = env.world
    lr = config.lr
    if lr == "auto":  # every process runs the test on its share; rank 0's suggestion is the run's
        lr = distributed.broadcast(suggest_lr_for_config(config, model, loaders["train"], pipeline, verbose=verbose,
                                                         run_dir=run_dir if world.is_main else None, inputs=inputs))
    lr = float(lr) if lr is not None else DEFAULT_LR[config.optimizer]
    steps_per_epoch = len(loaders["train"])  # the same on every process (EpochSampler evens the shares)
    total_steps, budget = steps_per_epoch * config.epochs, None
    if checkpoint is not None and checkpoint.state.planned_steps:
        total_steps = checkpoint.state.planned_steps  # a budgeted run resumes its plan, not a new one
    elif config.time and checkpoint is None:
        budget = plan_budget(config, model, loaders["train"], pipeline, loss_fn, len(loaders["val"].dataset),
                             started, verbose, inputs)
        budget.plan = distributed.broadcast(budget.plan)  # every process follows rank 0's plan
        total_steps = budget.plan.total_steps
    optimizer = build_optimizer(model, config.optimizer, lr, config.weight_decay, config.backbone_lr)
    scheduler = build_scheduler(optimizer, config.schedule, total_steps, round(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(env.device.type, enabled=env.precision.name == "fp16")
    average = WeightAverage(model, decay_for(total_steps)) if config.ema else None
    return Optimisation(lr, total_steps, optimizer, scheduler, scaler, average, budget)


def classifier_first(config: TrainConfig, model: nn.Module, data: RunData, pipeline: InputPipeline,
                     loss_fn: nn.Module, env: Environment, started: float, verbose: bool) -> HeadPhase:
    """Stage 4a (--head-views, on by default with --pretrained): the classifier fitted alone on the frozen
    network's features of config.head_views views per training image, each computed once (cnnlab.training.transfer);
    with --time, the views that fit in budget.HEAD_SHARE of it (rank 0's clock decides for every process)."""
    budget = parse_duration(config.time) if config.time else None

    def more_views(done: int, seconds_per_view: float) -> bool:
        return bool(distributed.broadcast(another_view(done, config.head_views, seconds_per_view,
                                                       time.monotonic() - started, budget)))
    return train_classifier_first(model, data.datasets["train"], preprocessing_of(config).eval_transform(), pipeline,
                                  seed=config.seed, batch_size=config.batch_size * 2, workers=env.workers,
                                  more_views=more_views, label_smoothing=config.label_smoothing,
                                  class_weight=loss_fn.weight, verbose=verbose)


def run_folder(config: TrainConfig, world: World, overwrite: bool) -> tuple[Path, bool]:
    """Stage 5: a new run's folder, made by rank 0 and named to every process; and whether it was created here
    (not there before), so that a run failing before its first checkpoint can leave nothing behind."""
    created = None
    if world.is_main:
        existed = bool(config.out) and Path(config.out).expanduser().is_dir()
        path = new_run_dir(config.out, config.model, overwrite)
        created = str(path), not existed
    path, made = distributed.broadcast(created)
    return Path(path), made


def prepare(config: TrainConfig, *, checkpoint: TrainingCheckpoint | None = None, overwrite: bool = False,
            verbose: bool = True) -> Run:
    """Build a Run from `config` (a new run folder), or continue one from its `checkpoint` (--resume), in stages:
    environment -> data -> model -> loaders -> run folder -> optimisation -> the run's files -> restore."""
    started = time.monotonic()  # a --time budget counts from here: scanning and caching are part of the run
    if config.weights and config.pretrained:
        raise CnnlabError("--weights and --pretrained both say which weights to start from; give only one")
    if config.log and int(os.environ.get("RANK", "0")) == 0:
        check_trackers(config.log, config.mlflow_uri)  # a missing package or server: now, not after the data
    env = environment(config)
    world = env.world
    verbose = verbose and world.is_main  # one process speaks and writes the run folder
    if config.batch_size != "auto" and config.batch_size % world.world_size:
        raise CnnlabError(f"--batch-size {config.batch_size} is the global batch, shared by {world.world_size} "
                          f"processes: make it a multiple of {world.world_size}")
    splits = find_splits(config, world, checkpoint.classes if checkpoint is not None else None)
    model, start_note = prepare_model(config, len(splits.classes), env, start_weights=checkpoint is None)
    data = prepare_data(config, splits, world, verbose)
    if config.batch_size == "auto":  # measured now, with the image cache in memory, for the loaders below
        config = dataclasses.replace(config, batch_size=shared_auto_batch_size(
            config, len(splits.classes), env.device, env.precision, data.train_draws, env.workers, world, verbose))
    balance = resolve_balance(config.balance, data.train_counts)
    loaders = make_loaders(config, data, env, balance)
    if checkpoint is not None:
        run_dir, created = Path(config.out), False
    else:
        run_dir, created = run_folder(config, world, overwrite)
    try:
        return _assemble(config, env, data, model, start_note, balance, loaders, run_dir, created, checkpoint,
                         started, verbose)
    except BaseException:
        if checkpoint is None and world.is_main:
            discard_unstarted(run_dir, created)
        raise


def _assemble(config: TrainConfig, env: Environment, data: RunData, model: nn.Module, start_note: str | None,
              balance: "Balance", loaders: dict[str, DataLoader], run_dir: Path, created: bool,
              checkpoint: TrainingCheckpoint | None, started: float, verbose: bool) -> Run:
    """Stages 4 to 6 (inside the run folder): optimisation, the run's files, the wrapped model, restore."""
    world, splits = env.world, data.splits
    unreadable = UnreadableImages(loaders, config.max_bad, checkpoint.state.unreadable if checkpoint else None)
    unreadable.known_in_advance()
    pipeline = input_pipeline(config, env.device, env.precision)
    loss_fn = loss_function(config, balance, data.train_counts).to(env.device)
    if config.head_views and checkpoint is None:  # a resumed run's classifier is in its checkpoint
        classifier_first(config, model, data, pipeline, loss_fn, env, started, verbose)
    inputs = step_inputs(config, pipeline, len(splits.classes))
    optimisation = prepare_optimisation(config, model, loaders, pipeline, loss_fn, env, run_dir, checkpoint,
                                        started, verbose, inputs)
    if optimisation.budget is not None:
        config = dataclasses.replace(config, epochs=optimisation.budget.plan.epochs)
    resolved = dataclasses.replace(config, data=splits.root, lr=optimisation.lr, workers=env.workers,
                                   out=str(run_dir), device=str(env.device), precision=env.precision.name,
                                   channels_last=env.precision.channels_last,
                                   cache=data.cache.mode if data.cache is not None else "off")
    preprocessing = preprocessing_of(config)
    metadata = model_metadata(config.model, model_options(config), splits.classes, config.img_size,
                              preprocessing.to_dict())
    dataset_info = {"root": splits.root, "split_source": splits.split_source, "counts": splits.counts(),
                    "ignored_files": len(splits.ignored), "skipped_rows": len(splits.skipped_rows),
                    "balance": {"requested": config.balance, "mode": balance.mode, "ratio": round(balance.ratio, 3)}}
    if world.is_main:
        write_config(run_dir, resolved.to_dict())
        write_classes(run_dir, splits.classes)
        write_model(run_dir, metadata)

    # Forward passes go through `net` (DDP-wrapped with several processes, compiled if asked); weights are
    # saved from `model`, whose state_dict keys carry neither wrapper's prefix.
    net = model
    if world.distributed:
        net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        torch.manual_seed(config.seed * 1_000_003 + world.rank)  # dropout: other masks on each process
    net = compile_model(net) if config.compile else net
    parts = TrainingParts(model, net, optimisation.optimizer, optimisation.scheduler, optimisation.scaler, loss_fn,
                          pipeline, optimisation.average,
                          # bags validate through the model's tile_outputs, which a compiled wrapper hides
                          validation_net=model if world.distributed or preprocessing.bags else net,
                          inputs=inputs)
    run = Run(resolved, run_dir, splits, metadata, preprocessing, parts, loaders["train"], loaders["val"],
              unreadable, dataset_info, verbose=verbose, budget=optimisation.budget, world=world,
              created_folder=created)
    if optimisation.budget is not None:
        run.state.planned_steps = optimisation.total_steps
    run.write_dataset_info()
    if world.is_main and config.log:
        run.trackers = open_trackers(config.log, run_dir, resolved.to_dict(),
                                     checkpoint.state.epoch if checkpoint is not None else None, config.mlflow_uri)
    _log_start(run, data, env, start_note, balance)
    if checkpoint is not None:
        restore(run, checkpoint)
    return run


def _log_start(run: Run, data: RunData, env: Environment, start_note: str | None, balance: "Balance") -> None:
    """What the run is about to do, in a few lines."""
    config = run.config
    n_params = sum(p.numel() for p in run.parts.model.parameters())
    tiles = f" ({data.train_draws:,} tiles per epoch: the tiles each image's area holds)" if data.draws is not None \
        else (f" (each a bag of its {config.tile} px tiles at scale {config.scale:g}, {config.bag_tiles} of them "
              "learnt from per step)" if preprocessing_of(config).bags else "")
    run.log(f"training {config.model} ({n_params:,} parameters) on {len(data.datasets['train'])} train{tiles} / "
            f"{len(data.datasets['val'])} val images, {len(run.classes)} classes, {config.img_size}px, "
            f"{env.device} {env.precision.name}, {env.workers} workers -> {run.run_dir}")
    if config.batch_size > data.train_draws:
        what = "tiles an epoch draws" if data.draws is not None else "training images"
        run.log(f"note: --batch-size {config.batch_size} is larger than the {data.train_draws} {what}, so every "
                "epoch is a single step; a smaller batch takes more steps per epoch")
    if start_note:
        run.log(start_note)
    if balance.mode != "off":
        run.log(balance.note)
    outliers = describe_outliers(quick_outliers_of(data, config), data.splits.root)
    if outliers:
        run.log(outliers)


def quick_outliers_of(data: RunData, config: TrainConfig) -> list:
    """The files data check would call out of place that a run can tell without reading more: a stray format (by
    suffix), and for whole-image runs with a cache, tiny images and extreme aspect ratios (from the cached sizes)."""
    splits = data.splits
    samples = [(sample.path, split, splits.classes[sample.label]) for split, members in splits.splits.items()
               for sample in members]
    sizes = None
    if data.cache is not None and not preprocessing_of(config).tiled:  # tiles are at a scale: sizes would mislead
        view = data.cache.select([path for path, _, _ in samples])
        sizes = {path: tuple(int(v) for v in view.shapes[i]) for i, (path, _, _) in enumerate(samples)
                 if i not in view.problems}
    return quick_outliers(samples, sizes)


def restore(run: Run, checkpoint: TrainingCheckpoint) -> None:
    """Stage 6 (--resume): the loop state, the best epoch's validation logits, the weight average, then the weights,
    optimizer, schedule, scaler and every random-number generator (last: it sets the RNGs)."""
    parts = run.parts
    run.state = checkpoint.state
    extra = checkpoint.extra()
    if "val.logits" in extra:
        run.best_val = Logits(extra["val.logits"], extra["val.labels"], extra["val.indices"])
    if parts.average is not None:
        parts.average.load({name[len("ema."):]: t for name, t in extra.items() if name.startswith("ema.")},
                           checkpoint.state.ema_steps)
    run.log(f"resuming {run.run_dir} from {checkpoint.state.position()}, to epoch {run.config.epochs}")
    restore_training(checkpoint, parts.model, parts.optimizer, parts.scheduler, parts.scaler, parts.device,
                     run.world.rank, run.world.world_size)
