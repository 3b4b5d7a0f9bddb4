"""`cnnlab lr-find`: the learning-rate range test (cnnlab.training.lr_find) on a data folder, with the model
and training loader built exactly as training builds them (cnnlab.training.setup)."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab import plots
from cnnlab.config import TrainConfig
from cnnlab.data.folders import find_samples
from cnnlab.data.loaders import make_loader
from cnnlab.files import write_json
from cnnlab.training.device import default_workers, resolve_device, resolve_precision
from cnnlab.training.lr_find import LRFindResult, as_json, run_for_config
from cnnlab.training.setup import build_model, input_pipeline, make_datasets, open_training_cache, seed_everything


def default_plot_path(data: str, model: str) -> Path:
    """runs/lr_find/<data folder name>-<model>.png: kept with the runs, not dropped into the current folder."""
    return Path("runs").absolute() / "lr_find" / f"{Path(data).resolve().name}-{model}.png"


def find_lr(data: str, model: str = "simple_cnn", img_size: int = 128, batch_size: int = 32,
            optimizer: str = "adamw", steps: int = 200, out: str | Path | None = None, run: str | None = None,
            verbose: bool = True, **options) -> tuple[LRFindResult, Path]:
    """Build the model and training loader as training would (`options` are TrainConfig fields), run the
    LR range test and write the plot: to RUN/lr_find.png with `run`, else to `out`, else
    runs/lr_find/<data>-<model>.png. Returns the result and the plot's path."""
    config = TrainConfig(data=data, model=model, img_size=img_size, batch_size=batch_size,
                         optimizer=optimizer, **options)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device, config.channels_last)
    splits = find_samples(config.data, val_fraction=config.val_fraction, seed=config.seed)
    seed_everything(config.seed)
    net = build_model(config, len(splits.classes)).to(device)
    if precision.channels_last:
        net = net.to(memory_format=torch.channels_last)
    train_only = splits.only("train")  # the test reads train only
    cache = open_training_cache(train_only, config, verbose=verbose)
    dataset = make_datasets(train_only, config, cache)["train"]
    workers = default_workers() if config.workers is None else config.workers
    loader = make_loader(dataset, config.batch_size, workers, train=True, seed=config.seed,
                         pin_memory=device.type == "cuda")
    result = run_for_config(config, net, loader, input_pipeline(config, device, precision), num_steps=steps)
    path = Path(run) / "lr_find.png" if run else Path(out) if out else default_plot_path(data, model)
    plots.lr_find_curve(result.lrs, result.losses, result.smoothed, result.suggestion, path,
                        title=f"LR range test: {model}, {optimizer}, {img_size}px, batch {batch_size}")
    if run:
        write_json(Path(run) / "lr_find.json", as_json(result))
    return result, path
