"""`cnnlab lr-find`: the learning-rate range test (cnnlab.training.lr_find) on a data folder, with the model
and training loader built by training's own stages (cnnlab.training.setup)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from cnnlab import plots
from cnnlab.config import Help, TrainConfig
from cnnlab.training.record import LR_FIND_PNG, write_lr_find
from cnnlab.training.lr_find import LRFindResult, as_json, run_for_config
from cnnlab.training.setup import (environment, find_splits, input_pipeline, make_loaders, prepare_data,
                                   prepare_model, resolve_balance, step_inputs)


def default_plot_path(data: str, model: str) -> Path:
    """runs/lr_find/<data folder name>-<model>.png: kept with the runs, not dropped into the current folder."""
    return Path("runs").absolute() / "lr_find" / f"{Path(data).resolve().name}-{model}.png"


def find_lr(data: str,
            steps: Annotated[int, Help("Steps of the range test (fewer on a small dataset; the loader is cycled).")]
            = 200,
            out: Annotated[str | Path | None, Help("Where to write the plot (default: "
                                                   "runs/lr_find/<data>-<model>.png).")] = None,
            run: Annotated[str | None, Help("Run folder: write RUN/lr_find.png and lr_find.json there.")] = None,
            verbose: bool = True, **options) -> tuple[LRFindResult, Path]:
    """Run the learning-rate range test, print the suggested peak LR and plot loss vs LR.

    The model and training loader are built as training builds them (`options` are TrainConfig fields, with its
    defaults). The plot goes to RUN/lr_find.png with `run`, else to `out`, else runs/lr_find/<data>-<model>.png.
    Returns the result and the plot's path."""
    config = TrainConfig(data=str(data), **options)
    env = environment(config, join=False)
    splits = find_splits(config).only("train")  # the test reads train only
    model, _ = prepare_model(config, len(splits.classes), env)
    prepared = prepare_data(config, splits, verbose=verbose)
    loader = make_loaders(config, prepared, env, resolve_balance(config.balance, prepared.train_counts))["train"]
    pipeline = input_pipeline(config, env.device, env.precision)
    result = run_for_config(config, model, loader, pipeline, num_steps=steps,
                            inputs=step_inputs(config, pipeline, len(splits.classes)))
    path = Path(run) / LR_FIND_PNG if run else Path(out) if out else default_plot_path(data, config.model)
    plots.lr_find_curve(result.lrs, result.losses, result.smoothed, result.suggestion, path,
                        title=f"LR range test: {config.model}, {config.optimizer}, {config.img_size}px, "
                              f"batch {config.batch_size}")
    if run:
        write_lr_find(Path(run), as_json(result))
    return result, path


def show(found: tuple[LRFindResult, Path]) -> None:
    """The suggestion and where the plot went."""
    result, path = found
    print(result.describe(), flush=True)
    print(f"wrote {path}; train with --lr {result.suggestion:.2e} (or --lr auto)", flush=True)
