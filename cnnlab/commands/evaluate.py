"""`cnnlab eval RUN`: evaluate a trained run on a split (cnnlab.runs.evaluation computes and writes the results),
then rebuild its report."""

from __future__ import annotations

import os
from typing import Annotated

from cnnlab.config import Help, RUN_DATA_HELP
from cnnlab.errors import CnnlabError
from cnnlab.runs.evaluation import EvalResult, split_samples, write_evaluation
from cnnlab.runs.inference import open_trained
from cnnlab.runs.reject import write_threshold
from cnnlab.runs.report import write_report
from cnnlab.training.record import REPORT, eval_json, evaluation_figures


def evaluate(run_dir: str | os.PathLike, data: Annotated[str | None, RUN_DATA_HELP] = None,
             split: Annotated[str, Help("val, test or train (the split as training made it).")] = "val",
             which: str = "best", batch_size: int = 64, device: str = "auto", workers: int | None = None,
             cache: Annotated[str | None, Help("auto, disk, ram or off (default: the run's): decoded images come "
                                               "from the run's cache when it covers them.")] = None,
             top_losses: Annotated[int, Help("Highest-loss images shown (with their Grad-CAM).")] = 16,
             max_bad: float | None = None, tta: bool = False, tiled: bool = False, scale: float | None = None,
             verbose: bool = True) -> EvalResult:
    """Evaluate a run: accuracy, per-class precision/recall/F1, confusion matrix, top losses, calibration.

    Writes eval_<split>.json, its plots, and updates report.html. On the validation split with the best weights (no
    `tta`, `tiled` or `scale`: the view predict has by default) it also chooses the `unknown` threshold again
    (reject.json, risk_coverage.png; cnnlab.runs.reject), which gives a run trained before it existed one.

    Plots: confusion_matrix_<split>.png (counts and normalised per true class), top_losses_<split>.png (the
    `top_losses` images with the highest loss) and reliability_<split>.png (calibration).
    `cache` (auto, disk, ram, off; None = the run's setting): decoded images come from the training
    run's cache when it exists. Unreadable images are skipped with one warning each; more than `max_bad`
    (None = the run's setting) of the split is an error. `tta`: average with the mirrored image. Tiled runs
    score each whole image by their sliding window; `tiled` (or a `scale`) does that for any run.
    """
    trained = open_trained(run_dir, which, device)
    if tiled or scale is not None:
        trained = trained.with_tiles(scale)
    samples = split_samples(trained.record, data, split)
    dataset = trained.dataset(samples, cache, verbose)
    loader = trained.loader(dataset, batch_size, workers)
    outputs = trained.logits(loader, f"eval {split}", show_progress=verbose, tta=tta)
    if len(outputs.labels) == 0:
        raise CnnlabError(f"no readable images in the {split} split")
    unreadable = len(samples) - len(outputs.labels)  # each was skipped with one warning line naming it
    config = trained.record.config
    limit = (config.max_bad if config else 0.05) if max_bad is None else max_bad
    if unreadable > limit * len(samples):
        raise CnnlabError(f"{unreadable} of {len(samples)} images in the {split} split are unreadable "
                          f"(more than max_bad={limit:.0%}); run `cnnlab data check` to find and quarantine them")
    result = write_evaluation(trained.record, split, which, dataset, outputs, top_losses, tta=tta, explainer=trained)
    if split == "val" and which == "best" and not tta and trained.tiles is None:  # as predict sees images by default
        write_threshold(run_dir, result.probabilities, result.labels, split, which, title=trained.record.model)
    write_report(run_dir)
    return result


def show(result: EvalResult, split: str = "val") -> None:
    """The metrics table and the files written."""
    print(result.describe(), flush=True)
    figures = evaluation_figures(split)
    print(f"wrote {result.run_dir / eval_json(split)}, {figures['confusion_matrix']}, {figures['top_losses']}, "
          f"{figures['reliability']} and {REPORT}", flush=True)
