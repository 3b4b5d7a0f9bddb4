"""Predict the class of new images with a trained run (the same preprocessing as its evaluation), or with the
ONNX file `cnnlab export` made of it (onnxruntime runs the network; the images are prepared by the same code).

Every input gets a row: its top-k classes, or the reason it could not be predicted (a missing path, a
file that is not an image, a damaged image). One bad file never stops the others. The engine is
cnnlab.runs.prediction; this module is the command: its options, its table, its lines and exit code.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

from cnnlab.data.folders import expand_inputs
from cnnlab.errors import CnnlabError
from cnnlab.config import Help, TrainConfig, check_choice
from cnnlab.runs.exported import is_onnx_file
from cnnlab.runs.prediction import open_predictor, predict_paths
from cnnlab.runs.reader import read_run
from cnnlab.runs.tables import table_format, write_table


ENGINES = ("local", "ray")


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
            engine: Annotated[str, Help(
                "local (this process) or ray: Ray Data actors on this machine or the cluster at --address, "
                "--out NAME.parquet a folder of parts that a rerun resumes (docs/scale-out.md).")] = "local",
            address: Annotated[str | None, Help(
                "With --engine ray: the cluster's head HOST:PORT, or auto (the cluster this machine is in); "
                "default: start a local Ray instance with this machine's cores.")] = None,
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
    check_choice("engine", engine, ENGINES)
    if engine == "ray":
        return _predict_with_ray(run_dir, inputs, out, address, heatmap, top_k=top_k, which=which, device=device,
                                 cache=cache, tta=tta, tiled=tiled, scale=scale, reject=reject)
    if address is not None:
        raise CnnlabError("--address names a Ray cluster: give --engine ray with it")
    if out is not None:
        table_format(out)  # a wrong extension is refused before any image is read
    predictor = open_predictor(run_dir, top_k, which, device, cache, tta, tiled, scale, heatmap, heatmap_class, reject)
    rows = predict_paths(predictor, expand_inputs(inputs), batch_size, workers, verbose)
    if out is not None:
        write_table(rows, out)
    return rows


def _predict_with_ray(run_dir, inputs, out, address, heatmap, **options) -> list[dict]:
    """predict(..., engine="ray"): cnnlab.runs.ray_predict, after the options it cannot take are refused."""
    if out is None:
        raise CnnlabError("--engine ray writes its rows to a Parquet folder that a rerun resumes: give --out "
                          "NAME.parquet")
    if heatmap is not None:
        raise CnnlabError("--heatmap writes one PNG per image on the machine that predicts it; with --engine ray "
                          "that is any node of the cluster: predict those images without --engine ray")
    from cnnlab.runs.ray_predict import predict_with_ray
    return predict_with_ray(run_dir, inputs, out, address, options)


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
