"""`cnnlab lr-find`: the learning-rate range test (cnnlab.training.lr_find) on a data folder, with the model
and training loader built by training's own stages (cnnlab.training.setup)."""

from __future__ import annotations

from pathlib import Path

from cnnlab import plots
from cnnlab.config import TrainConfig
from cnnlab.training.record import LR_FIND_PNG, write_lr_find
from cnnlab.training.lr_find import LRFindResult, as_json, run_for_config
from cnnlab.training.setup import (environment, find_splits, input_pipeline, make_loaders, prepare_data,
                                   prepare_model, resolve_balance)


def default_plot_path(data: str, model: str) -> Path:
    """runs/lr_find/<data folder name>-<model>.png: kept with the runs, not dropped into the current folder."""
    return Path("runs").absolute() / "lr_find" / f"{Path(data).resolve().name}-{model}.png"


def find_lr(data: str, steps: int = 200, out: str | Path | None = None, run: str | None = None,
            verbose: bool = True, **options) -> tuple[LRFindResult, Path]:
    """Build the model and training loader as training would (`options` are TrainConfig fields, with its
    defaults), run the LR range test for `steps` steps and write the plot: to RUN/lr_find.png with `run`, else to
    `out`, else runs/lr_find/<data>-<model>.png. Returns the result and the plot's path."""
    config = TrainConfig(data=str(data), **options)
    env = environment(config, join=False)
    splits = find_splits(config).only("train")  # the test reads train only
    model, _ = prepare_model(config, len(splits.classes), env)
    prepared = prepare_data(config, splits, verbose=verbose)
    loader = make_loaders(config, prepared, env, resolve_balance(config.balance, prepared.train_counts))["train"]
    result = run_for_config(config, model, loader, input_pipeline(config, env.device, env.precision), num_steps=steps)
    path = Path(run) / LR_FIND_PNG if run else Path(out) if out else default_plot_path(data, config.model)
    plots.lr_find_curve(result.lrs, result.losses, result.smoothed, result.suggestion, path,
                        title=f"LR range test: {config.model}, {config.optimizer}, {config.img_size}px, "
                              f"batch {config.batch_size}")
    if run:
        write_lr_find(Path(run), as_json(result))
    return result, path
