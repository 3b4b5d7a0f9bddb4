"""Training as a few plain verbs: prepare the data and model, train_one_epoch, validate, fit.

fit() writes a self-describing run folder (see cnnlab.runfolder) and returns the history. At the end
of every epoch it also writes RUN/checkpoint.safetensors (cnnlab.training_state), from which
fit(resume=RUN) continues bit for bit; SIGINT/SIGTERM stop it after the current step with a checkpoint
(cnnlab.interrupt). Unreadable images are skipped and counted (cnnlab.unreadable).
The loop only touches the model, a loader with set_epoch, the optimizer and the scheduler, so it can
run unchanged in each process of a torchrun/DDP job once the model is wrapped and the sampler sharded.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab import plots
from cnnlab.cache import CachedImages, open_cache
from cnnlab.checkpoint import load_weights, remove_stale_temporaries, save_weights
from cnnlab.config import TrainConfig, resolve_out
from cnnlab.data import DatasetSplits, ImageDataset, find_samples
from cnnlab.device import Precision, compile_model, default_workers, resolve_device, resolve_precision
from cnnlab.errors import CnnlabError
from cnnlab.inference import collect_logits, loss_and_accuracy, to_device
from cnnlab.interrupt import StopOnSignal, TrainingInterrupted
from cnnlab.loaders import make_loader
from cnnlab.models import create_model
from cnnlab.optim import DEFAULT_LR, build_optimizer, build_scheduler
from cnnlab.progress import Progress
from cnnlab.report import finish_run
from cnnlab.runfolder import model_metadata, write_json, write_metrics, write_yaml
from cnnlab.training_state import (CHECKPOINT_NAME, LoopState, load_training_checkpoint, restore_training,
                                   resumed_config, save_training_checkpoint)
from cnnlab.transforms import DECODE_RATIO, IMAGENET_MEAN, IMAGENET_STD, decode_size, eval_transform, train_transform
from cnnlab.unreadable import UnreadableImages

# Stop when this many steps in a row had a non-finite loss: the run has diverged, and skipping on
# would only hide it.
MAX_NONFINITE_STEPS = 10


@dataclass
class TrainResult:
    """What fit() returns: the per-epoch history and where everything was written."""

    run_dir: Path
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    best_val_acc: float
    stopped_early: bool = False
    model: nn.Module | None = None  # the trained model after the last epoch (same as last.safetensors)
    extras: dict = field(default_factory=dict)  # e.g. the diagnosis, added by later stages
    skipped_steps: int = 0  # steps whose loss was not finite (the weights were not updated from them)
    unreadable: dict = field(default_factory=dict)  # {split: number of images that could not be read}

    def summary(self) -> str:
        """A few lines for the terminal."""
        last = self.history[-1]
        lines = [f"run folder: {self.run_dir}",
                 f"best epoch {self.best_epoch}: val_loss {self.best_val_loss:.4f}, val_acc {self.best_val_acc:.4f}"
                 f" (last epoch {last['epoch']}: val_acc {last['val_acc']:.4f})"]
        if self.stopped_early:
            lines.append("stopped early: validation loss stopped improving (--patience)")
        if self.skipped_steps:
            lines.append(f"skipped {self.skipped_steps} steps whose loss was not finite (skipped_steps in metrics.csv)")
        if self.unreadable:
            counts = ", ".join(f"{n} in {split}" for split, n in self.unreadable.items())
            lines.append(f"skipped unreadable images: {counts} (listed in {self.run_dir / 'dataset.json'})")
        return "\n".join(lines)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (weights initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def preprocessing(img_size: int) -> dict:
    """How images are prepared for the model; stored with the weights so prediction matches training."""
    return {"resize_short_side": img_size, "center_crop": img_size, "decode_ratio": DECODE_RATIO,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "color": "RGB",
            "exif_orientation": True}


def model_options(config: TrainConfig) -> dict:
    """Keyword arguments for create_model, as stored in model.json (never `pretrained`: the weights
    come from the run's own files when the model is rebuilt)."""
    options = {"dropout": config.dropout, "img_size": config.img_size}
    options.update(config.model_options)
    return options


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """create_model with the run's options, checked against the image size."""
    extra = {"pretrained": True} if config.pretrained else {}
    if config.pretrained and config.model in ("simple_cnn", "mlp"):
        raise CnnlabError(f"--pretrained: there are no pretrained weights for {config.model}; "
                          "use a torchvision model such as resnet18, or drop --pretrained")
    model = create_model(config.model, num_classes, **model_options(config), **extra)
    minimum = getattr(model, "min_input_size", 1)
    if config.img_size < minimum:
        raise CnnlabError(f"img_size={config.img_size} is too small for model '{config.model}', which "
                          f"halves the image {int(math.log2(minimum))} times; use --img-size {minimum} or more")
    return model


def make_datasets(splits: DatasetSplits, config: TrainConfig, cache: CachedImages | None = None
                  ) -> dict[str, ImageDataset]:
    """Training set with the augmentation preset; val/test with the deterministic eval transform.

    With `cache` (open_cache over every split's files), images come from it instead of the files.
    """
    datasets = {}
    for split, samples in splits.splits.items():
        transform = train_transform(config.augment, config.img_size) if split == "train" \
            else eval_transform(config.img_size)
        source = cache.select([sample.path for sample in samples]) if cache is not None else None
        datasets[split] = ImageDataset(samples, transform, decode_size=decode_size(config.img_size),
                                       max_pixels=config.max_pixels, source=source)
    return datasets


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
    device: torch.device
    precision: Precision


def train_step(parts: TrainingParts, images: torch.Tensor, labels: torch.Tensor, state: LoopState) -> float | None:
    """One optimisation step on a batch (N, 3, H, W); returns the loss, or None for a skipped step.

    A non-finite loss never reaches backward() or the optimizer, and the BatchNorm statistics its
    forward pass updated are put back: the step changes nothing but the schedule and the counts.
    """
    images, labels = to_device(images, parts.device, parts.precision), labels.to(parts.device, non_blocking=True)
    buffers = [buffer.detach().clone() for buffer in parts.model.buffers()]  # BN running stats (small)
    with parts.precision.autocast(parts.device):
        logits = parts.net(images)                      # (N, K)
        loss = parts.loss_fn(logits.float(), labels)    # loss in fp32 for a stable log-softmax
    sums = state.epoch_sums
    sums["lr"] = parts.optimizer.param_groups[0]["lr"]
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if not torch.isfinite(loss):
        with torch.no_grad():
            for buffer, saved in zip(parts.model.buffers(), buffers):
                buffer.copy_(saved)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            parts.scheduler.step()  # the schedule stays aligned with the batches
        sums["skipped_steps"] += 1
        state.skipped_steps += 1
        state.nonfinite_in_a_row += 1
        if state.nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
            raise CnnlabError(f"training stopped in epoch {state.epoch + 1}: the loss was not a finite number "
                              f"(nan or inf) for {MAX_NONFINITE_STEPS} steps in a row ({state.skipped_steps} "
                              "skipped in all; the weights were never updated from them). Lower the learning "
                              "rate (--lr), check the images with `cnnlab data check`, or use --precision fp32")
        return None
    state.nonfinite_in_a_row = 0
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    loss_value = loss.item()
    sums["correct"] += (logits.argmax(1) == labels).sum().item()
    sums["images"] += len(labels)
    sums["loss_sum"] += loss_value * len(labels)
    return loss_value


def train_one_epoch(parts: TrainingParts, loader, state: LoopState, epoch: int, unreadable: UnreadableImages,
                    stop: StopOnSignal | None = None, show_progress: bool = True) -> bool:
    """Train on epoch `epoch` from batch state.batches_done on; False if a stop signal came first."""
    parts.net.train()
    first = state.batches_done
    unreadable.begin_pass("train", epoch, start_batch=first)
    with Progress(len(loader.sampler), f"epoch {epoch} train", enabled=show_progress) as progress:
        for batch_number, (images, labels, indices) in enumerate(loader, start=first):
            unreadable.record_batch("train", batch_number - first, indices, epoch)
            if images.numel() > 0:
                progress.update(len(labels), train_step(parts, images, labels, state))
            state.batches_done = batch_number + 1
            if stop is not None and stop.signum is not None:
                return False
    return True


def epoch_row(state: LoopState, epoch: int, val_loss: float, val_acc: float, seconds: float,
              lr: float) -> dict:
    """One line of metrics.csv from the sums of the epoch just trained."""
    sums = state.epoch_sums
    seen = sums["images"]
    return {"epoch": epoch, "lr": sums["lr"] if sums["lr"] is not None else lr,
            "train_loss": sums["loss_sum"] / seen if seen else float("nan"),
            "train_acc": sums["correct"] / seen if seen else float("nan"),
            "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds,
            "skipped_steps": sums["skipped_steps"]}


def _log(message: str, verbose: bool) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


@dataclass
class Run:
    """A training run in progress: its options, folder, training parts, loaders and bookkeeping."""

    config: TrainConfig
    resolved: dict  # config.yaml: the options with every "auto" resolved; stored in each checkpoint
    run_dir: Path
    classes: list[str]
    metadata: dict  # model.json, also inside each .safetensors
    parts: TrainingParts
    train_loader: DataLoader
    val_loader: DataLoader
    unreadable: UnreadableImages
    dataset_info: dict  # dataset.json, without the unreadable files
    verbose: bool = True
    reported_unreadable: dict = field(default_factory=dict)  # counts last written to dataset.json

    def save_checkpoint(self, state: LoopState) -> None:
        """RUN/checkpoint.safetensors for `cnnlab train --resume`."""
        state.unreadable = self.unreadable.state()
        parts = self.parts
        save_training_checkpoint(self.run_dir, parts.model, parts.optimizer, parts.scheduler, parts.scaler, state,
                                 self.resolved, self.classes, parts.device)

    def write_dataset_info(self) -> None:
        """dataset.json: splits, counts and the unreadable files found so far."""
        report = self.unreadable.report()
        write_json(self.run_dir / "dataset.json", self.dataset_info | ({"unreadable": report} if report else {}))
        self.reported_unreadable = self.unreadable.count()


def _train_epochs(run: Run, state: LoopState, stop: StopOnSignal) -> None:
    """The epoch loop, from wherever `state` says the run is, to config.epochs or an early stop."""
    config, parts, verbose = run.config, run.parts, run.verbose
    for epoch in range(state.epoch + 1, config.epochs + 1):
        start = time.perf_counter()
        run.train_loader.sampler.set_epoch(epoch)
        if not train_one_epoch(parts, run.train_loader, state, epoch, run.unreadable, stop, show_progress=verbose):
            _stop_on_signal(run, state, stop.signum, save=True)
        run.unreadable.begin_pass("val", epoch)
        logits, labels, indices = collect_logits(parts.net, run.val_loader, parts.device, parts.precision,
                                                 f"epoch {epoch} val", show_progress=verbose)
        run.unreadable.record_pass("val", indices, epoch)
        val_loss, val_acc = loss_and_accuracy(logits, labels)
        row = epoch_row(state, epoch, val_loss, val_acc, time.perf_counter() - start,
                        parts.optimizer.param_groups[0]["lr"])
        images = state.epoch_sums["images"]
        state.history.append(row)
        improved = val_loss < state.best_val_loss
        if improved:
            state.best_epoch, state.best_val_loss, state.best_val_acc = epoch, val_loss, val_acc
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += 1
        state.stopped_early = bool(config.patience and state.epochs_without_improvement >= config.patience)
        state.epoch = epoch
        state.start_epoch()
        _save_epoch(run, state, improved)
        _log(f"epoch {epoch}/{config.epochs}: train_loss {row['train_loss']:.4f} train_acc "
             f"{row['train_acc']:.3f} | val_loss {val_loss:.4f} val_acc {val_acc:.3f} | "
             f"{images / row['seconds']:.0f} img/s, {row['seconds']:.1f}s"
             + (f" | {row['skipped_steps']} steps skipped (non-finite loss)" if row["skipped_steps"] else "")
             + (" *" if improved else ""), verbose)
        if state.stopped_early:
            _log(f"early stop: no better validation loss for {config.patience} epochs", verbose)
            return
        if stop.signum is not None and epoch < config.epochs:
            _stop_on_signal(run, state, stop.signum, save=False)


def _save_epoch(run: Run, state: LoopState, improved: bool) -> None:
    """Weights, metrics, curves and the checkpoint of the epoch just finished (the checkpoint last).

    If a file cannot be written (disk full, read-only), training stops: going on would compute
    epochs that cannot be kept. The files of the previous epoch are intact, so --resume works.
    """
    epoch, model = state.epoch, run.parts.model
    try:
        if improved:
            save_weights(model, run.run_dir / "best.safetensors", run.metadata | {"epoch": epoch})
        save_weights(model, run.run_dir / "last.safetensors", run.metadata | {"epoch": epoch})
        write_metrics(run.run_dir, state.history)
        if run.unreadable.count() != run.reported_unreadable:
            run.write_dataset_info()
        plots.learning_curves(state.history, run.run_dir / "learning_curves.png", title=f"{run.config.model} on "
                              f"{Path(run.config.data).name}", best_epoch=state.best_epoch)
        run.save_checkpoint(state)
    except CnnlabError as error:
        raise CnnlabError(f"{error}. Training stopped after epoch {epoch} because its files could not be "
                          f"saved; the last checkpoint in {run.run_dir} is kept: once this is fixed, continue "
                          f"with `cnnlab train --resume {run.run_dir}`") from None


def _stop_on_signal(run: Run, state: LoopState, signum: int, save: bool) -> None:
    """After SIGINT/SIGTERM: write a checkpoint (mid-epoch if `save`) and raise TrainingInterrupted."""
    if save:
        run.save_checkpoint(state)
    raise TrainingInterrupted(signum, f"{signal.Signals(signum).name}: training stopped at {state.position()}; "
                                      f"the checkpoint is in {run.run_dir / CHECKPOINT_NAME}. Continue with: "
                                      f"cnnlab train --resume {run.run_dir}")


def load_start_weights(model: nn.Module, path: str, model_name: str, num_classes: int) -> str:
    """Copy the weights in `path` into `model` (--weights); returns a line saying what was loaded.

    Every tensor must match by name and shape, except the classifier's when the file was trained on
    another number of classes: those stay freshly initialised, and the line says so.
    """
    state, meta = load_weights(path)  # safetensors, or .pt/.pth read with weights_only=True only
    if meta.get("model") and meta["model"] != model_name:
        raise CnnlabError(f"--weights {path} holds a '{meta['model']}' model but --model is '{model_name}'; "
                          f"pass --model {meta['model']}")
    if state and all(name.startswith("module.") for name in state):  # saved from DataParallel/DDP
        state = {name[len("module."):]: tensor for name, tensor in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise CnnlabError(f"--weights {path} does not fit model '{model_name}' ("
                          + (f"missing: {', '.join(missing[:3])}" if missing else "")
                          + ("; " if missing and unexpected else "")
                          + (f"unexpected: {', '.join(unexpected[:3])}" if unexpected else "")
                          + "); check --model and --model-option against the run the weights come from")
    different = [name for name in own if own[name].shape != state[name].shape]
    # the classifier's output layer: first dimension = number of classes, the rest as in the file
    head = [name for name in different if own[name].ndim == state[name].ndim > 0
            and own[name].shape[0] == num_classes and own[name].shape[1:] == state[name].shape[1:]]
    if different != head:
        name = next(n for n in different if n not in head)
        raise CnnlabError(f"--weights {path}: {name} has shape {tuple(state[name].shape)} in the file but "
                          f"{tuple(own[name].shape)} in model '{model_name}'; check --model-option and --img-size")
    file_classes = state[head[0]].shape[0] if head else num_classes
    for name in head:
        state[name] = own[name]  # keep the fresh initialisation
    model.load_state_dict(state, strict=True)
    if head:
        return (f"starting from the weights in {path}, except the classifier ({', '.join(head)}), which starts "
                f"fresh: the file was trained on {file_classes} classes, this data has {num_classes}")
    return f"starting from the weights in {path}"


def fit(config: TrainConfig | None = None, *, verbose: bool = True, resume: str | os.PathLike | None = None,
        **options) -> TrainResult:
    """Train a model on an image folder; `options` are TrainConfig fields (same names as the CLI flags).

    resume=RUN_DIR continues that run exactly where its checkpoint left it, with the options in its
    config.yaml; only `epochs` (to extend the run) and `workers` may be given with it.
    """
    checkpoint = None
    if resume is not None:
        if config is not None:
            raise CnnlabError("fit(resume=RUN_DIR) takes its options from the run folder; do not pass a config")
        checkpoint = load_training_checkpoint(resume)
        config = TrainConfig.from_dict(resumed_config(resume, checkpoint, **options))
    config = config or TrainConfig(**options)
    if not config.data:
        raise CnnlabError("no data folder given; pass --data DIR (make one with `cnnlab data synth DIR`)")
    if config.weights and config.pretrained:
        raise CnnlabError("--weights and --pretrained both say which weights to start from; give only one")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device, config.channels_last)
    splits = find_samples(config.data, val_fraction=config.val_fraction, seed=config.seed)
    classes = splits.classes
    if checkpoint is not None and checkpoint.classes != classes:
        raise CnnlabError(f"the classes in {config.data} ({', '.join(classes)}) are not the ones {resume} was "
                          f"trained on ({', '.join(checkpoint.classes)}); resume with the same data folder")
    seed_everything(config.seed)
    model = build_model(config, len(classes)).to(device)
    start_note = None
    if config.weights and checkpoint is None:  # a resumed run's weights come from its checkpoint
        start_note = load_start_weights(model, config.weights, config.model, len(classes))
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)

    run_dir = resolve_out(config.out, config.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    workers = default_workers() if config.workers is None else config.workers
    # Decode every file once, at the size the transforms start from; later epochs read uint8 pixels.
    cache = open_cache([sample.path for samples in splits.splits.values() for sample in samples],
                       decode_size(config.img_size), config.cache, cache_dir=config.cache_dir,
                       max_pixels=config.max_pixels, verbose=verbose)
    datasets = make_datasets(splits, config, cache)
    train_loader = make_loader(datasets["train"], config.batch_size, workers, train=True, seed=config.seed,
                               pin_memory=device.type == "cuda")
    val_loader = make_loader(datasets["val"], config.batch_size * 2, workers, train=False,
                             pin_memory=device.type == "cuda")
    for loader in (train_loader, val_loader):
        # A DataLoader draws its workers' base seed from torch's global generator when it starts an
        # iterator -- in the first epoch a process runs -- which would shift dropout's random numbers
        # in a resumed run. Its own generator avoids that (augmentation is seeded per image anyway).
        loader.generator = torch.Generator().manual_seed(config.seed)
    if len(datasets["val"]) == 0:
        raise CnnlabError(f"no validation images in {config.data}; add a val/ folder or raise --val-fraction")
    unreadable = UnreadableImages(datasets, config.max_bad, checkpoint.state.unreadable if checkpoint else None)
    unreadable.attach("train", train_loader)
    unreadable.attach("val", val_loader)
    unreadable.known_in_advance()

    lr = config.lr
    if lr == "auto":
        from cnnlab.lr_find import suggest_lr_for_config

        lr = suggest_lr_for_config(config, model, train_loader, device, precision, verbose=verbose, run_dir=run_dir)
    lr = float(lr) if lr is not None else DEFAULT_LR[config.optimizer]
    steps_per_epoch = math.ceil(len(datasets["train"]) / config.batch_size)
    optimizer = build_optimizer(model, config.optimizer, lr, config.weight_decay)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch * config.epochs,
                                round(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    resolved = config.to_dict() | {"lr": lr, "workers": workers, "out": str(run_dir), "device": str(device),
                                   "precision": precision.name, "channels_last": precision.channels_last,
                                   "cache": cache.mode if cache is not None else "off"}
    write_yaml(run_dir / "config.yaml", resolved)
    write_json(run_dir / "classes.json", classes)
    dataset_info = {"root": splits.root, "split_source": splits.split_source, "counts": splits.counts(),
                    "ignored_files": len(splits.ignored)}
    metadata = model_metadata(config.model, model_options(config), classes, config.img_size,
                              preprocessing(config.img_size))
    write_json(run_dir / "model.json", metadata)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"training {config.model} ({n_params:,} parameters) on {len(datasets['train'])} train / "
         f"{len(datasets['val'])} val images, {len(classes)} classes, {config.img_size}px, "
         f"{device} {precision.name}, {workers} workers -> {run_dir}", verbose)
    if start_note:
        _log(start_note, verbose)

    # Forward passes go through `net` (compiled if asked); weights are saved from `model`, whose
    # state_dict keys do not carry torch.compile's wrapper prefix.
    net = compile_model(model) if config.compile else model
    parts = TrainingParts(model, net, optimizer, scheduler, scaler, loss_fn, device, precision)
    run = Run(config, resolved, run_dir, classes, metadata, parts, train_loader, val_loader, unreadable,
              dataset_info, verbose)
    run.write_dataset_info()
    state = LoopState()
    if checkpoint is not None:
        state = checkpoint.state
        _log(f"resuming {run_dir} from {checkpoint.state.position()}, to epoch {config.epochs}", verbose)
        restore_training(checkpoint, model, optimizer, scheduler, scaler, device)  # last: it sets the RNGs
    with StopOnSignal() as stop:
        _train_epochs(run, state, stop)
    result = TrainResult(run_dir, state.history, state.best_epoch, state.best_val_loss, state.best_val_acc,
                         state.stopped_early, model=model, skipped_steps=state.skipped_steps,
                         unreadable=unreadable.count())
    from cnnlab.augment_preview import write_run_preview
    write_run_preview(run_dir, config)  # RUN/augment_preview.png for the report; a failure only warns
    # the verdict on the learning curves (diagnosis.json, result.extras["diagnosis"]) and report.html
    finish_run(result, splits, verbose=verbose)
    return result
