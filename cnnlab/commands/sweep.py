"""`cnnlab sweep`: which image size is worth its cost? Short runs at each size with the same time budget, a table,
two plots and a recommendation.

Every size (for tiled runs: every pixel scale, at one tile size) trains with the same options and the same --time
budget into OUT/size-<S>/ (OUT/scale-<X>/), so each gets the same wall-clock time: a larger image costs more per
step and gets fewer epochs, which is the trade-off the sweep measures. As with `train --time`, the budget includes
building the run's image cache (each size has its own, decoded at that size). From each run: its best validation
accuracy, that accuracy's 95% Wilson interval (the diagnosis's val_acc_interval), its epochs, its training time
and its verdict. They go to OUT/sweep.json and OUT/sweep.md; OUT/sweep_size.png plots accuracy against the size,
OUT/sweep_time.png against the training time; OUT/sweep.html shows everything (cnnlab.runs.sweep_page).

The recommendation follows RULE: the smallest size whose interval overlaps the interval of the size with the best
accuracy. An accuracy inside the best one's interval is within what the validation set can tell apart, so a
larger image's gain over it is not shown to be real, while its cost is.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from cnnlab import plots
from cnnlab.commands.train import fit
from cnnlab.config import Help, TrainConfig, parse_duration
from cnnlab.data.folders import find_samples
from cnnlab.errors import CnnlabError
from cnnlab.files import write_json, write_text
from cnnlab.models import create_model
from cnnlab.runs.diagnosis import Verdict
from cnnlab.runs.sweep_page import SWEEP_JSON, write_sweep_page
from cnnlab.training.setup import check_tiles_fit, model_options

RULE = ("the smallest size whose 95% interval of validation accuracy overlaps the interval of the size with the best "
        "validation accuracy: the validation set cannot tell the two apart, and the smaller one costs less")
VERDICTS = {verdict.value for verdict in Verdict}
# The training options the sweep sets per run itself (its own --img-size, --scale, --tile, --time, --out)
SETS_ITSELF = ("img_size", "scale", "tile", "time", "out")


@dataclass
class SweepRow:
    """One run of the sweep."""

    resolution: float
    """The image size in px, or for tiled runs the pixel scale."""
    img_size: int
    """The network's input side (the tile for tiled runs)."""
    best_val_acc: float
    interval: tuple[float, float]
    """95% Wilson interval of best_val_acc on the validation images."""
    best_epoch: int
    epochs: int
    train_seconds: float
    """The epochs' training and validation time, from metrics.csv."""
    verdict: str
    """The diagnosis's verdict (good_fit, underfitting, ...)."""
    headline: str
    run_dir: str
    curve: list[tuple[float, float]] = field(default_factory=list)
    """(training time so far, validation accuracy) after each epoch."""


@dataclass
class SweepResult:
    """The sweep's rows (in resolution order), which is best and which recommended, and where it was written."""

    rows: list[SweepRow]
    best: int
    recommended: int
    out_dir: Path
    settings: dict

    def describe(self) -> str:
        """The table and the recommendation, as Markdown."""
        return markdown(self)


def recommend(resolutions: list[float], accuracies: list[float], intervals: list[tuple[float, float]]
              ) -> tuple[int, int]:
    """(index of the best accuracy, index of the recommended resolution) by RULE; a tie in accuracy goes to the
    smaller resolution."""
    best = max(range(len(accuracies)), key=lambda i: (accuracies[i], -resolutions[i]))
    low, high = intervals[best]
    overlapping = [i for i, (lo, hi) in enumerate(intervals) if hi >= low and lo <= high]
    return best, min(overlapping, key=lambda i: resolutions[i])


def parse_resolutions(text: str | list, kind: type, flag: str) -> list:
    """'64,96,128' -> [64, 96, 128] (sorted, each once); a clear error for anything else."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = sorted({kind(str(item).strip()) for item in items if str(item).strip()})
    except ValueError:
        raise CnnlabError(f"{flag} {text!r} is not a comma-separated list of {'numbers' if kind is float else 'sizes'};"
                          f" write e.g. {flag} {'0.25,0.5' if kind is float else '64,96,128'}") from None
    if len(values) < 2:
        raise CnnlabError(f"{flag} {text!r}: a sweep needs two or more different values, e.g. "
                          f"{'0.25,0.5' if kind is float else '64,96,128'}")
    return values


def sweep(data: str,
          sizes: Annotated[str | list[int] | None, Help("Image sizes to compare, comma-separated (each at least the "
                                                        "model's minimum); default 64,96,128.", flag="--img-size")]
          = None, *,
          time: Annotated[str, Help("Wall-clock budget of every run, the same for each size (e.g. 90s, 2m, 10m).")]
          = "2m",
          tile: Annotated[int | None, Help("Compare pixel scales instead: every run trains on tiles of this side, at "
                                           "each --scale.")] = None,
          scales: Annotated[str | list[float] | None, Help("With --tile: the pixel scales to compare, comma-separated "
                                                           "(e.g. 0.25,0.5).", flag="--scale")] = None,
          out: Annotated[str | Path, Help("Folder for one run per size and sweep.html, sweep.json, sweep.md.")]
          = "runs/sweep",
          overwrite: Annotated[bool, Help("Replace the runs of an earlier sweep in --out.")] = False,
          verbose: bool = True, **train_options) -> SweepResult:
    """Which image size is worth its cost? Train at each size for the same --time, then a table, accuracy against
    size and against training time, each run's verdict and a recommendation (the smallest size within the noise of
    the best), on one self-contained page: OUT/sweep.html.

    With `tile`, the runs compare pixel `scales` instead. Writes OUT/sweep.json, sweep.md, sweep_size.png,
    sweep_time.png and sweep.html. `train_options` are TrainConfig fields shared by every run."""
    for name in SETS_ITSELF:
        if name in train_options:
            raise CnnlabError(f"sweep sets {name} itself for every run; do not pass {name}=")
    parse_duration(time)
    if tile:
        if scales is None:
            raise CnnlabError("--tile sweeps pixel scales: give them with --scale, e.g. --tile 256 --scale 0.25,0.5")
        resolutions = parse_resolutions(scales, float, "--scale")
        configs = [TrainConfig(data=str(data), tile=tile, scale=x, time=time, out=str(Path(out) / f"scale-{x:g}"),
                               **train_options) for x in resolutions]
    else:
        resolutions = parse_resolutions(sizes if sizes is not None else "64,96,128", int, "--img-size")
        configs = [TrainConfig(data=str(data), img_size=s, time=time, out=str(Path(out) / f"size-{s}"),
                               **train_options) for s in resolutions]
    _check_before_training(configs, tile)
    rows = []
    for k, config in enumerate(configs):
        if verbose:
            what = f"scale {config.scale:g} ({tile} px tiles)" if tile else f"{config.img_size} px"
            print(f"sweep: {what} for {time} ({k + 1}/{len(configs)})", file=sys.stderr, flush=True)
        result = fit(config, overwrite=overwrite, verbose=verbose)
        rows.append(_row(resolutions[k], config, result))
    best, recommended = recommend([r.resolution for r in rows], [r.best_val_acc for r in rows],
                                  [r.interval for r in rows])
    num_classes = len(find_samples(data, val_fraction=configs[0].val_fraction, seed=configs[0].seed).classes)
    shared = {key: value for key, value in configs[0].to_dict().items() if key not in SETS_ITSELF}
    settings = {"data": str(data), "time": time, "tile": tile, "resolutions": resolutions, "classes": num_classes,
                "options": shared}
    result = SweepResult(rows, best, recommended, Path(out), settings)
    _write(result)
    return result


def _check_before_training(configs: list[TrainConfig], tile: int | None) -> None:
    """What would fail later fails now, before the first run: a size below the model's minimum (one line), and for
    tiled runs an image that does not hold a tile at some scale."""
    for config in configs:
        with torch.device("meta"):  # only its minimum side: no weights allocated
            model = create_model(config.model, 2, **model_options(config))
        minimum = model.min_input_size
        if config.img_size < minimum:
            flag, value = ("--tile", tile) if tile else ("--img-size", config.img_size)
            raise CnnlabError(f"{flag} {value} is below the {minimum} px that model '{config.model}' needs (it halves "
                              f"the image {int(math.log2(minimum))} times); sweep sizes of {minimum} px or more")
    if tile:
        splits = find_samples(configs[0].data, val_fraction=configs[0].val_fraction, seed=configs[0].seed)
        check_tiles_fit(splits, configs[0], None)  # the smallest scale: if a tile fits there, it fits at all


def _row(resolution: float, config: TrainConfig, result) -> SweepRow:
    diagnosis = result.diagnosis
    interval = tuple(diagnosis.val_acc_interval) if diagnosis and diagnosis.val_acc_interval else (0.0, 1.0)
    elapsed, curve = 0.0, []
    for row in result.history:
        elapsed += row["seconds"]
        curve.append((round(elapsed, 2), row["val_acc"]))
    return SweepRow(resolution, config.img_size, result.best_val_acc, interval, result.best_epoch, len(result.history),
                    elapsed, str(diagnosis.verdict) if diagnosis else "?",
                    diagnosis.headline if diagnosis else "", str(result.run_dir), curve)


def _write(result: SweepResult) -> None:
    """sweep.json (what the page is built from), sweep.md, the two plots and sweep.html."""
    out, rows, settings = result.out_dir, result.rows, result.settings
    label = "image size (px)" if not settings["tile"] else f"pixel scale ({settings['tile']} px tiles)"
    chance = 1 / settings["classes"]
    data_name = Path(settings["data"]).name
    plots.sweep_accuracy([r.resolution for r in rows], [r.best_val_acc for r in rows], [r.interval for r in rows],
                         result.best, result.recommended, out / "sweep_size.png", xlabel=label, chance=chance,
                         title=f"{settings['options']['model']} on {data_name}, {settings['time']} each")
    plots.sweep_curves({_name(r.resolution, settings): r.curve for r in rows}, out / "sweep_time.png", chance=chance,
                       title=f"{settings['options']['model']} on {data_name}: accuracy over the training time")
    write_json(out / SWEEP_JSON, {"settings": settings, "rule": RULE, "best": result.best,
                                  "recommended": result.recommended, "rows": [asdict(r) for r in rows]})
    write_text(out / "sweep.md", f"# Image size sweep: {settings['options']['model']} on {data_name}, "
                                 f"{settings['time']} each\n\n{markdown(result)}\n")
    write_sweep_page(out)


def _name(resolution: float, settings: dict) -> str:
    return f"scale {resolution:g}" if settings["tile"] else f"{resolution:g} px"


def markdown(result: SweepResult) -> str:
    """The sweep's table and recommendation as Markdown."""
    head = "scale" if result.settings["tile"] else "size"
    lines = [f"| {head} | best val accuracy | 95% interval | epochs | training time | verdict |",
             "|---:|---:|---:|---:|---:|---|"]
    for k, r in enumerate(result.rows):
        mark = " (best)" if k == result.best else ""
        mark += " (recommended)" if k == result.recommended else ""
        lines.append(f"| {_name(r.resolution, result.settings)}{mark} | {100 * r.best_val_acc:.1f}% | "
                     f"{100 * r.interval[0]:.1f}-{100 * r.interval[1]:.1f}% | {r.epochs} | {r.train_seconds:.0f} s | "
                     f"{Verdict(r.verdict).label.lower() if r.verdict in VERDICTS else r.verdict} |")
    chosen, best = result.rows[result.recommended], result.rows[result.best]
    lines += ["", f"Recommended: {_name(chosen.resolution, result.settings)} ({100 * chosen.best_val_acc:.1f}%; the best "
                  f"was {_name(best.resolution, result.settings)} at {100 * best.best_val_acc:.1f}%). Rule: {RULE}."]
    return "\n".join(lines)


def show(result: SweepResult) -> None:
    """The table and recommendation, and where the page was written."""
    print(result.describe(), flush=True)
    print(f"wrote {result.out_dir / 'sweep.html'}, sweep.json, sweep.md and the plots", flush=True)
