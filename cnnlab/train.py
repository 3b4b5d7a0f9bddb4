"""Training as a few plain verbs: prepare the data and model, train_one_epoch, validate, fit.

fit() writes a self-describing run folder (see cnnlab.runfolder) and returns the history.
The loop only touches the model, a loader with set_epoch, the optimizer and the scheduler, so it can
run unchanged in each process of a torchrun/DDP job once the model is wrapped and the sampler sharded.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab import plots
from cnnlab.checkpoint import remove_stale_temporaries, save_weights
from cnnlab.config import TrainConfig, resolve_out
from cnnlab.data import DatasetSplits, ImageDataset, find_samples
from cnnlab.device import Precision, default_workers, resolve_device, resolve_precision
from cnnlab.errors import CnnlabError
from cnnlab.inference import collect_logits, loss_and_accuracy, to_device
from cnnlab.loaders import make_loader
from cnnlab.models import create_model
from cnnlab.optim import DEFAULT_LR, build_optimizer, build_scheduler
from cnnlab.progress import Progress
from cnnlab.runfolder import model_metadata, write_json, write_metrics, write_yaml
from cnnlab.transforms import DECODE_RATIO, IMAGENET_MEAN, IMAGENET_STD, decode_size, eval_transform, train_transform


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

    def summary(self) -> str:
        """A few lines for the terminal."""
        last = self.history[-1]
        lines = [f"run folder: {self.run_dir}",
                 f"best epoch {self.best_epoch}: val_loss {self.best_val_loss:.4f}, val_acc {self.best_val_acc:.4f}"
                 f" (last epoch {last['epoch']}: val_acc {last['val_acc']:.4f})"]
        if self.stopped_early:
            lines.append("stopped early: validation loss stopped improving (--patience)")
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


def make_datasets(splits: DatasetSplits, config: TrainConfig) -> dict[str, ImageDataset]:
    """Training set with the augmentation preset; val/test with the deterministic eval transform."""
    datasets = {}
    for split, samples in splits.splits.items():
        transform = train_transform(config.augment, config.img_size) if split == "train" \
            else eval_transform(config.img_size)
        datasets[split] = ImageDataset(samples, transform, decode_size=decode_size(config.img_size),
                                       max_pixels=config.max_pixels)
    return datasets


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, loss_fn, device: torch.device,
                    precision: Precision, scaler: torch.amp.GradScaler, epoch: int,
                    show_progress: bool = True) -> dict:
    """One pass over the training loader; returns train_loss, train_acc, images, lr, skipped_steps."""
    model.train()
    correct = seen = skipped = 0
    lr = optimizer.param_groups[0]["lr"]
    with Progress(len(loader.sampler), f"epoch {epoch} train", enabled=show_progress) as progress:
        for images, labels, _ in loader:
            if images.numel() == 0:
                continue
            images, labels = to_device(images, device, precision), labels.to(device, non_blocking=True)
            with precision.autocast(device):
                logits = model(images)                    # (N, K)
                loss = loss_fn(logits.float(), labels)    # loss in fp32 for a stable log-softmax
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                # a non-finite loss would poison the weights: skip the step, count it
                skipped += 1
                scheduler.step()
                continue
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            progress.update(len(labels), loss.item())
        mean_loss = progress.loss if seen else float("nan")
    return {"train_loss": mean_loss, "train_acc": correct / seen if seen else float("nan"),
            "images": seen, "lr": lr, "skipped_steps": skipped}


def _log(message: str, verbose: bool) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def fit(config: TrainConfig | None = None, *, verbose: bool = True, **options) -> TrainResult:
    """Train a model on an image folder; `options` are TrainConfig fields (same names as the CLI flags)."""
    config = config or TrainConfig(**options)
    if not config.data:
        raise CnnlabError("no data folder given; pass --data DIR (make one with `cnnlab data synth DIR`)")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device, config.channels_last)
    splits = find_samples(config.data, val_fraction=config.val_fraction, seed=config.seed)
    classes = splits.classes
    seed_everything(config.seed)
    model = build_model(config, len(classes)).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)

    run_dir = resolve_out(config.out, config.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    workers = default_workers() if config.workers is None else config.workers
    datasets = make_datasets(splits, config)
    train_loader = make_loader(datasets["train"], config.batch_size, workers, train=True, seed=config.seed,
                               pin_memory=device.type == "cuda")
    val_loader = make_loader(datasets["val"], config.batch_size * 2, workers, train=False,
                             pin_memory=device.type == "cuda")
    if len(datasets["val"]) == 0:
        raise CnnlabError(f"no validation images in {config.data}; add a val/ folder or raise --val-fraction")

    lr = config.lr
    if lr == "auto":
        from cnnlab.lr_find import suggest_lr_for_config

        lr = suggest_lr_for_config(config, model, train_loader, device, precision, verbose=verbose)
    lr = float(lr) if lr is not None else DEFAULT_LR[config.optimizer]
    steps_per_epoch = len(train_loader)
    optimizer = build_optimizer(model, config.optimizer, lr, config.weight_decay)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch * config.epochs,
                                round(config.warmup_epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    resolved = config.to_dict() | {"lr": lr, "workers": workers, "out": str(run_dir), "device": str(device),
                                   "precision": precision.name, "channels_last": precision.channels_last}
    write_yaml(run_dir / "config.yaml", resolved)
    write_json(run_dir / "classes.json", classes)
    write_json(run_dir / "dataset.json", {"root": splits.root, "split_source": splits.split_source,
                                          "counts": splits.counts(), "ignored_files": len(splits.ignored)})
    metadata = model_metadata(config.model, model_options(config), classes, config.img_size,
                              preprocessing(config.img_size))
    write_json(run_dir / "model.json", metadata)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"training {config.model} ({n_params:,} parameters) on {len(datasets['train'])} train / "
         f"{len(datasets['val'])} val images, {len(classes)} classes, {config.img_size}px, "
         f"{device} {precision.name}, {workers} workers -> {run_dir}", verbose)

    history: list[dict] = []
    best = {"epoch": 0, "val_loss": math.inf, "val_acc": 0.0}
    epochs_without_improvement = 0
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(model, train_loader, optimizer, scheduler, loss_fn, device, precision,
                                scaler, epoch, show_progress=verbose)
        logits, labels, _ = collect_logits(model, val_loader, device, precision, f"epoch {epoch} val",
                                        show_progress=verbose)
        val_loss, val_acc = loss_and_accuracy(logits, labels)
        row = {"epoch": epoch, "lr": stats["lr"], "train_loss": stats["train_loss"],
               "train_acc": stats["train_acc"], "val_loss": val_loss, "val_acc": val_acc,
               "seconds": time.perf_counter() - start}
        history.append(row)
        improved = val_loss < best["val_loss"]
        if improved:
            best = {"epoch": epoch, "val_loss": val_loss, "val_acc": val_acc}
            epochs_without_improvement = 0
            save_weights(model, run_dir / "best.safetensors", metadata | {"epoch": epoch})
        else:
            epochs_without_improvement += 1
        save_weights(model, run_dir / "last.safetensors", metadata | {"epoch": epoch})
        write_metrics(run_dir, history)
        plots.learning_curves(history, run_dir / "learning_curves.png", title=f"{config.model} on "
                              f"{Path(config.data).name}", best_epoch=best["epoch"])
        _log(f"epoch {epoch}/{config.epochs}: train_loss {row['train_loss']:.4f} train_acc "
             f"{row['train_acc']:.3f} | val_loss {val_loss:.4f} val_acc {val_acc:.3f} | "
             f"{stats['images'] / row['seconds']:.0f} img/s, {row['seconds']:.1f}s"
             + (" *" if improved else ""), verbose)
        if config.patience and epochs_without_improvement >= config.patience:
            stopped_early = True
            _log(f"early stop: no better validation loss for {config.patience} epochs", verbose)
            break
    return TrainResult(run_dir, history, best["epoch"], best["val_loss"], best["val_acc"], stopped_early,
                       model=model)
