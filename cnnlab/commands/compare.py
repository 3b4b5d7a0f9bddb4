"""MLP vs CNN (or any models): train each on the same data, split, epochs, seed and budget, and put the
results side by side.

The lecture's claim, measured: a convolution shares its weights across the image, so a CNN needs far
fewer parameters than an MLP on raw pixels (whose first layer has 3*H*W*hidden weights) and still
generalises better. Every model gets the same TrainConfig except `model` (and its own model options),
trains into OUT/<model>/, and the results go to OUT/compare.md, OUT/compare.json and OUT/compare.png.
"""

from __future__ import annotations

import sys
from typing import Annotated
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab import plots
from cnnlab.commands.train import fit
from cnnlab.config import Help, TrainConfig, check_choice
from cnnlab.errors import CnnlabError
from cnnlab.files import write_json, write_text
from cnnlab.models import list_models
from cnnlab.runs.reader import read_run

COLUMNS = ("model", "parameters", "train_seconds", "best_val_acc", "best_epoch", "verdict")
TABLE_NOTE = ("Best epoch: the one with the lowest validation loss (its weights are RUN/best.safetensors); "
              "best val accuracy is the accuracy at that epoch. Training time: the epochs' train + validation "
              "time, without setup (the first run may also have filled the image cache). Verdict: "
              "`cnnlab.diagnose` on the learning curves; see each run's report.html.")


@dataclass
class CompareResult:
    """One row per model (COLUMNS), the run folder of each, and where the table and plot were written."""

    rows: list[dict]
    runs: dict[str, Path]
    out_dir: Path
    settings: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The table as Markdown."""
        return markdown_table(self.rows)


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table: parameters in millions, time in seconds, accuracy in percent."""
    lines = ["| model | parameters | training time | best val accuracy | best epoch | verdict |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['parameters']:,} ({row['parameters'] / 1e6:.2f} M) | "
                     f"{row['train_seconds']:.1f} s | {100 * row['best_val_acc']:.1f}% | {row['best_epoch']} | "
                     f"{row['verdict']} |")
    return "\n".join(lines)


# The training options compare sets for every model itself (they are not flags of `cnnlab compare`).
SETS_ITSELF = ("model", "model_options", "out")


def compare(data: str, models: Annotated[str | list[str], Help("Comma-separated model names; `cnnlab models` lists "
                                                                 "them.")] = "mlp,simple_cnn",
            out: Annotated[str | Path, Help("Folder for one run per model and compare.md/.json/.png.")]
            = "runs/compare",
            overwrite: Annotated[bool, Help("Replace the runs of an earlier compare in --out.")] = False,
            per_model_options: dict[str, dict] | None = None, verbose: bool = True,
            **train_options) -> CompareResult:
    """Train several models (e.g. an MLP and a CNN) with identical settings and print one table.

    Writes compare.md, compare.json and compare.png to `out`. `train_options` are TrainConfig fields shared by every
    model (its defaults otherwise); `per_model_options` maps a model name to its own factory options; `overwrite`
    replaces runs from an earlier compare into the same `out`."""
    models = [name.strip() for name in models.split(",") if name.strip()] if isinstance(models, str) else list(models)
    if len(models) < 2 or len(set(models)) != len(models):
        raise CnnlabError(f"compare needs two or more different models; got {', '.join(models) or 'none'} "
                          "(e.g. --models mlp,simple_cnn)")
    for name in models:
        check_choice("model", name, tuple(list_models()))  # fail before hours of training, not after
    for name in SETS_ITSELF:
        if name in train_options:
            raise CnnlabError(f"compare sets {name} itself for every model; do not pass {name}=")
    per_model_options = per_model_options or {}
    out_dir = Path(out)
    base = TrainConfig(data=str(data), **train_options)
    rows, runs, histories, parameters = [], {}, {}, {}
    for name in models:
        config = TrainConfig.from_dict(base.to_dict() | {"model": name, "out": str(out_dir / name),
                                                         "model_options": per_model_options.get(name, {})})
        if verbose:
            print(f"compare: training {name} ({models.index(name) + 1}/{len(models)})", file=sys.stderr, flush=True)
        result = fit(config, overwrite=overwrite, verbose=verbose)
        n_params = sum(p.numel() for p in result.model.parameters())
        num_classes = read_run(result.run_dir).num_classes
        diagnosis = result.diagnosis  # the run's own verdict, the same as in its report
        rows.append({"model": name, "parameters": n_params,
                     # epoch time (train + validation) only: the first run may also build the image cache
                     "train_seconds": sum(row["seconds"] for row in result.history),
                     "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch,
                     "verdict": diagnosis.verdict.label.lower(), "run_dir": str(result.run_dir)})
        runs[name] = result.run_dir
        histories[name] = result.history
        parameters[name] = n_params

    settings = {"data": str(data), "epochs": base.epochs, "img_size": base.img_size, "batch_size": base.batch_size,
                "seed": base.seed, **train_options}
    write_json(out_dir / "compare.json", {"settings": settings, "rows": rows})
    header = ", ".join(f"{key}={value}" for key, value in settings.items())
    write_text(out_dir / "compare.md", f"# Models compared\n\nSame data, split, epochs, seed and budget: "
               f"{header}\n\n{markdown_table(rows)}\n\n{TABLE_NOTE}\n")
    plots.compare_models(histories, parameters, out_dir / "compare.png", chance=1 / num_classes,
                         title=f"{' vs '.join(models)} on {Path(data).name} at {base.img_size}px, {base.epochs} epochs")
    return CompareResult(rows, runs, out_dir, settings)


def show(result: CompareResult) -> None:
    """The table, and where it was written."""
    print(result.describe(), flush=True)
    print(f"wrote {result.out_dir / 'compare.md'}, compare.json and compare.png", flush=True)
