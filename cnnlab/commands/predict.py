"""Predict the class of new images with a trained run (the same preprocessing as its evaluation), or with the
ONNX file `cnnlab export` made of it (onnxruntime runs the network; the images are prepared by the same code).

Every input gets a row: its top-k classes, or the reason it could not be predicted (a missing path, a
file that is not an image, a damaged image). One bad file never stops the others.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated
from pathlib import Path

import torch

from cnnlab import plots
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample, expand_inputs
from cnnlab.errors import CnnlabError, ImageReadError
from cnnlab.config import Help, TrainConfig
from cnnlab.runs.display import window_heatmap
from cnnlab.runs.exported import is_onnx_file, open_onnx
from cnnlab.runs.inference import open_trained
from cnnlab.runs.reader import read_run
from cnnlab.runs.reject import is_unknown, resolve_threshold
from cnnlab.runs.tables import table_format, write_table
from cnnlab.training.forward import Windows
from cnnlab.training.record import REJECT


def _read_error(dataset: ImageDataset, index: int) -> str:
    """Why the image at `index` could not be read (read once more here: the worker only printed it)."""
    try:
        dataset.load(index)
    except ImageReadError as error:
        return error.reason
    return "could not be read while predicting"


def predict(run_dir: str | os.PathLike, inputs: list[str | os.PathLike],
            top_k: Annotated[int, Help("Classes to show per image.")] = 3, which: str = "best",
            batch_size: int = 32, device: str = "auto", workers: int | None = None,
            cache: Annotated[str | None, Help("auto, disk, ram or off (default: the run's): decoded images come "
                                              "from the run's cache when it covers them.")] = None,
            tta: bool = False, tiled: bool = False, scale: float | None = None,
            heatmap: Annotated[str | os.PathLike | None, Help(
                "Write <image>.heatmap.png into this folder: the probability of the predicted class (or --class) for "
                "every window position (bag runs: each tile's attention).")] = None,
            heatmap_class: Annotated[str | None, Help("The class the heatmap shows.", flag="--class")] = None,
            out: Annotated[str | os.PathLike | None, Help(
                "Also write the rows as a table: FILE.csv, FILE.jsonl or FILE.parquet (path, error, class_i, "
                "probability_i), written whole or not at all.")] = None,
            reject: Annotated[str, Help(
                "auto (the threshold the run chose on its validation split, reject.json), off, or a probability P: "
                "an image whose top probability is below it is answered unknown, with its closest classes.")]
            = "auto",
            verbose: bool = False) -> list[dict]:
    """Predict the top-k classes of images with a trained run or its exported ONNX file.

    Every input gets a line: its classes, or why it could not be predicted. Exit code 0 when every input was
    predicted, 1 when some could not be (each says why), 2 when more than --max-bad of them could not (judged over
    20 inputs or more; with fewer, a share says little: 1 of 3 is already 33%).

    Returns one row per input image, in order: {"path", "top": [{"class", "probability"}]} or {"path", "error"}.
    With a threshold (`reject`, cnnlab.runs.reject) every predicted row also has "unknown": true when its top
    probability is below it (its "top" are then the closest classes), else false; `reject` auto without a
    reject.json (a run evaluated before it existed: `cnnlab eval RUN` writes one) answers no image unknown.
    `run_dir`: a run folder, or an exported *.onnx file (run by onnxruntime on the CPU; `which`, `device` and
    `cache` do not apply). Folders are expanded to the images inside. A run trained on tiles predicts by sliding its
    tile over the whole image at its scale; `tiled` (or a `scale`) does that for any run, with windows of its input
    size. `heatmap`: a folder for one PNG per image (rows get "heatmap"). `workers`: decoding processes (None: none
    for one batch of inputs, else as many as the cores allow). `out`: a table of the rows (cnnlab.runs.tables).
    `exit_code(rows, max_bad)` applies --max-bad.
    """
    if out is not None:
        table_format(out)  # a wrong extension is refused before any image is read
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
    if threshold is None and str(reject).strip().lower() == "auto":
        print(f"note: {trained.record.run_dir} has no {REJECT}, so no image is answered unknown; `cnnlab eval "
              f"{trained.record.run_dir}` chooses a threshold (or pass --reject P)", file=sys.stderr, flush=True)
    top_k = max(1, min(top_k, trained.record.num_classes))
    expanded = expand_inputs(inputs)
    rows: list[dict] = [{"path": path, "error": reason} if reason else {"path": path} for path, reason in expanded]
    readable = [k for k, (_, reason) in enumerate(expanded) if reason is None]
    if readable:
        dataset = trained.dataset([Sample(expanded[k][0], 0) for k in readable], cache, verbose, warn=False)
        tiles: dict[int, Windows] = {}
        on_image = tiles.__setitem__ if heatmap is not None else None  # (index, windows) of every whole image
        if workers is None:  # decoding in worker processes pays for their start-up from the second batch on
            workers = 0 if len(readable) <= batch_size else None
        outputs = trained.logits(trained.loader(dataset, batch_size, workers), "predict", show_progress=verbose,
                                 tta=tta, on_image=on_image)
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
                dataset, index, windows, trained, Path(heatmap), class_index))
    if out is not None:
        write_table(rows, out)
    return rows


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


# A share of failures is judged over at least this many inputs: with fewer, one failure is already over a 5%
# --max-bad (1 of 3 is 33%), and a user predicting a handful of photos wants each one's answer and an exit code
# that says "some failed" (1), not "the batch is broken" (2).
MIN_INPUTS_FOR_SHARE = 20


def run_max_bad(run_dir: str | os.PathLike) -> float:
    """The --max-bad a run was trained with (an exported file: the default)."""
    config = None if is_onnx_file(run_dir) else read_run(run_dir).config
    return config.max_bad if config is not None else TrainConfig.max_bad


def exit_code(rows: list[dict], max_bad: float) -> int:
    """0 when every input was predicted, 1 when some were not (each row says why), 2 when more than `max_bad` of
    at least MIN_INPUTS_FOR_SHARE inputs were not (or any, with max_bad 0)."""
    failed = sum("error" in row for row in rows)
    if not failed:
        return 0
    judged = max_bad == 0 or len(rows) >= MIN_INPUTS_FOR_SHARE
    return 2 if judged and failed > max_bad * len(rows) else 1


def check_failures(rows: list[dict], max_bad: float) -> None:
    """CnnlabError when exit_code says the share of failed inputs is over `max_bad` (exit 2)."""
    if exit_code(rows, max_bad) == 2:
        failed = [row for row in rows if "error" in row]
        example = failed[0]
        raise CnnlabError(f"{len(failed)} of {len(rows)} inputs could not be predicted, more than --max-bad "
                          f"{max_bad:g} allows (e.g. {example['path']}: {example['error']}); check the paths, or "
                          "run `cnnlab data check` on the folder")


def show(rows: list[dict], run_dir: str | os.PathLike,
         as_json: Annotated[bool, Help("One JSON object per line (errors too).", flag="--json")] = False,
         max_bad: Annotated[float | None, Help("Fail (exit 2) if more than this share of the inputs cannot be "
                                               "predicted (default: the run's --max-bad).")] = None) -> int:
    """One line per input (or one JSON object), then the exit code: 0, 1 (some failed) or 2 (over --max-bad)."""
    for row in rows:
        if as_json:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        elif "error" in row:
            print(f"{row['path']}: error: {row['error']}", flush=True)
        else:
            classes = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"])
            print(f"{row['path']}: " + (f"unknown (closest: {classes})" if row.get("unknown") else classes)
                  + (f"  (heatmap: {row['heatmap']})" if "heatmap" in row else ""), flush=True)
    max_bad = run_max_bad(run_dir) if max_bad is None else max_bad
    check_failures(rows, max_bad)
    code = exit_code(rows, max_bad)
    if code:
        failed = sum("error" in row for row in rows)
        print(f"{failed} of {len(rows)} inputs could not be predicted (see the error lines)", file=sys.stderr, flush=True)
    return code
