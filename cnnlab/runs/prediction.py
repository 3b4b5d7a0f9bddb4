"""Prediction as an engine: a run (or its exported ONNX file) opened once with everything a prediction applies
(top-k, the `unknown` threshold, tiles, heatmaps), then any number of lists of paths predicted with it, one row per
input. `cnnlab predict` runs it in one process; `--engine ray` runs it in every actor of a Ray cluster
(cnnlab.runs.ray_predict), so both give one image the same row.

Every input gets a row: its top-k classes, or the reason it could not be predicted (a missing path, a
file that is not an image, a damaged image). One bad file never stops the others.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import plots
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample
from cnnlab.errors import CnnlabError, ImageReadError
from cnnlab.runs.display import window_heatmap
from cnnlab.runs.exported import is_onnx_file, open_onnx
from cnnlab.runs.inference import TrainedModel, open_trained
from cnnlab.runs.reject import is_unknown, resolve_threshold
from cnnlab.training.forward import Windows
from cnnlab.training.record import REJECT


@dataclass
class Predictor:
    """A run opened for prediction, with the options every input is predicted under."""

    trained: TrainedModel
    top_k: int
    """Classes per row (at most the run's number of classes)."""
    threshold: float | None
    """Top probability under which a row is `unknown` (cnnlab.runs.reject); None: no threshold."""
    tta: bool = False
    cache: str | None = None
    """Decoded-image cache mode (None: the run's; off for an exported file)."""
    heatmap: Path | None = None
    """A folder for <image>.heatmap.png, or None."""
    class_index: int | None = None
    """The class the heatmaps show (None: each image's predicted class)."""


def open_predictor(run_dir: str | os.PathLike, top_k: int = 3, which: str = "best", device: str = "auto",
                   cache: str | None = None, tta: bool = False, tiled: bool = False, scale: float | None = None,
                   heatmap: str | os.PathLike | None = None, heatmap_class: str | None = None,
                   reject: str = "auto", quiet: bool = False) -> Predictor:
    """Open a run folder or an exported *.onnx file for prediction (see cnnlab.commands.predict.predict for the
    options); `quiet`: no note when the run has no threshold (each of many processes would print it)."""
    if is_onnx_file(run_dir):
        trained, cache = open_onnx(run_dir), "off"
    else:
        trained = open_trained(run_dir, which, device)
    if tiled or scale is not None or (heatmap is not None and not trained.record.preprocessing.tile):
        trained = trained.with_tiles(scale)
    class_index = None
    if heatmap_class is not None and trained.preprocessing.bags:
        raise CnnlabError(f"--class {heatmap_class!r}: the heatmap of a bag run (--aggregate attention) is its "
                          "attention over the tiles, the same for every class; leave --class out (`cnnlab explain "
                          "--class` shows a class's Grad-CAM)")
    if heatmap_class is not None:
        if heatmap_class not in trained.record.classes:
            raise CnnlabError(f"--class {heatmap_class!r} is not one of the run's classes: "
                              f"{', '.join(trained.record.classes)}")
        class_index = trained.record.classes.index(heatmap_class)
    threshold = resolve_threshold(reject, trained.record.run_dir)  # an exported file: the run folder it lies in
    if threshold is None and str(reject).strip().lower() == "auto" and not quiet:
        print(f"note: {trained.record.run_dir} has no {REJECT}, so no image is answered unknown; `cnnlab eval "
              f"{trained.record.run_dir}` chooses a threshold (or pass --reject P)", file=sys.stderr, flush=True)
    return Predictor(trained, max(1, min(top_k, trained.record.num_classes)), threshold, tta, cache,
                     Path(heatmap) if heatmap is not None else None, class_index)


def predict_paths(predictor: Predictor, expanded: list[tuple[str, str | None]], batch_size: int = 32,
                  workers: int | None = None, verbose: bool = False) -> list[dict]:
    """One row per (path, reason) of cnnlab.data.folders.expand_inputs, in order: {"path", "top": [{"class",
    "probability"}]} (+ "unknown" with a threshold, "heatmap" with heatmaps) or {"path", "error"}. `workers`:
    decoding processes (None: none for one batch of inputs, else as many as the cores allow)."""
    trained, top_k, threshold = predictor.trained, predictor.top_k, predictor.threshold
    rows: list[dict] = [{"path": path, "error": reason} if reason else {"path": path} for path, reason in expanded]
    readable = [k for k, (_, reason) in enumerate(expanded) if reason is None]
    if not readable:
        return rows
    dataset = trained.dataset([Sample(expanded[k][0], 0) for k in readable], predictor.cache, verbose, warn=False)
    tiles: dict[int, Windows] = {}
    on_image = tiles.__setitem__ if predictor.heatmap is not None else None  # (index, windows) of each image
    if workers is None:  # decoding in worker processes pays for their start-up from the second batch on
        workers = 0 if len(readable) <= batch_size else None
    outputs = trained.logits(trained.loader(dataset, batch_size, workers), "predict", show_progress=verbose,
                             tta=predictor.tta, on_image=on_image)
    probabilities = torch.softmax(outputs.logits, dim=1) if len(outputs.indices) else None
    done = set()
    if probabilities is not None:
        values, classes = probabilities.topk(top_k, dim=1)
        for row, index in enumerate(outputs.indices.tolist()):
            done.add(index)
            rows[readable[index]]["top"] = [
                {"class": trained.record.classes[c], "probability": round(float(v), 6)}
                for v, c in zip(values[row].tolist(), classes[row].tolist())]
            if threshold is not None:  # the unrounded top probability, as the threshold was chosen on
                rows[readable[index]]["unknown"] = is_unknown(float(values[row, 0]), threshold)
    for index in range(len(readable)):
        if index not in done:
            rows[readable[index]]["error"] = _read_error(dataset, index)
    for index, windows in tiles.items():
        rows[readable[index]]["heatmap"] = str(write_heatmap(
            dataset, index, windows, trained, predictor.heatmap, predictor.class_index))
    return rows


def _read_error(dataset: ImageDataset, index: int) -> str:
    """Why the image at `index` could not be read (read once more here: the worker only printed it)."""
    try:
        dataset.load(index)
    except ImageReadError as error:
        return error.reason
    return "could not be read while predicting"


def write_heatmap(dataset: ImageDataset, index: int, windows: Windows, trained, folder: Path,
                  class_index: int | None = None) -> Path:
    """folder/<image name>.heatmap.png: the probability of one class (the image's predicted class by default)
    for every window position over the image, or for a bag run every tile's attention."""
    pre = trained.preprocessing
    image = dataset.load(index)                                              # (3, H, W) at the run's scale
    picture, heat, shown = window_heatmap(image, windows, pre, class_index)
    predicted = trained.record.classes[int(windows.image_logits(pre).argmax())]
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(dataset.samples[index].path).name
    path = folder / f"{Path(dataset.samples[index].path).stem}.heatmap.png"
    what = "attention (relative to the strongest tile)" if pre.bags else f"p({trained.record.classes[shown]})"
    return plots.heatmap_overlay(picture, heat, path,
                                 title=f"{name}: {what} per {pre.tile} px {'tile' if pre.bags else 'window'} at scale "
                                       f"{pre.scale:g} (predicted: {predicted})")
