"""The run folder's schema: every file a run folder holds, by name, and the functions that write them. A file is
written by one owner and read through one reader (cnnlab.runs.reader); nothing else spells a file name.

    RUN/config.yaml          every training option, resolved (read back as a TrainConfig)
    RUN/classes.json         class names, index order = model output order
    RUN/dataset.json         where the data came from: split sizes, per-class counts, unreadable files, image sizes
    RUN/model.json           model name, options, classes, preprocessing: enough to rebuild and predict
    RUN/metrics.csv          one row per epoch (METRIC_COLUMNS)
    RUN/learning_curves.png  loss and accuracy, train vs val (rewritten each epoch)
    RUN/best.safetensors     weights with the lowest validation loss
    RUN/last.safetensors     weights after the last finished epoch
    RUN/checkpoint.safetensors  the full training state for --resume (cnnlab.training.state)
    RUN/lr_find.json, .png   with --lr auto, or `cnnlab lr-find --run RUN`
    -- the end of a run (cnnlab.commands.train.finish) --
    RUN/diagnosis.json       the verdict, its evidence and advice, and the inputs it was judged on
    RUN/summary.json         the layer table at the training size
    RUN/image_sizes.png      the data's image sizes
    RUN/augment_preview.png  training images as the augmentation presents them
    RUN/eval_<split>.json    and confusion_matrix_<split>.png, top_losses_<split>.png, top_losses_<split>_gradcam.png,
                             top_losses_<split>_evidence.png (bag runs),
                             reliability_<split>.png: the evaluation (train writes val; `cnnlab eval` any split)
    RUN/reject.json          the confidence threshold under which predict and serve answer `unknown`, chosen on the
                             validation split (cnnlab.runs.reject), and risk_coverage.png, its trade-off curve
    RUN/report.html          one self-contained page of all of the above
    -- written on request --
    RUN/gradcam/             `cnnlab explain`
    RUN/inspect/             `cnnlab inspect`
    RUN/model.onnx, model.onnx.json  `cnnlab export`
    RUN/model.int8.onnx, model.int8.onnx.json  `cnnlab export --int8`: the int8 copy for CPUs, with its check
    RUN/tensorboard/         `train --log tensorboard`: event files (cnnlab.training.tracking)
    RUN/tracking.json        `train --log mlflow`: the MLflow store and run id a --resume continues
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write, remove_stale_temporaries, write_json, write_yaml

CONFIG = "config.yaml"
CLASSES = "classes.json"
DATASET = "dataset.json"
MODEL = "model.json"
METRICS = "metrics.csv"
CURVES = "learning_curves.png"
BEST = "best.safetensors"
LAST = "last.safetensors"
CHECKPOINT = "checkpoint.safetensors"
LR_FIND_JSON = "lr_find.json"
LR_FIND_PNG = "lr_find.png"
DIAGNOSIS = "diagnosis.json"
SUMMARY = "summary.json"
IMAGE_SIZES = "image_sizes.png"
AUGMENT_PREVIEW = "augment_preview.png"
REPORT = "report.html"
GRADCAM = "gradcam"
INSPECT = "inspect"
ONNX = "model.onnx"
ONNX_METADATA = "model.onnx.json"
ONNX_INT8 = "model.int8.onnx"
ONNX_INT8_METADATA = "model.int8.onnx.json"
REJECT = "reject.json"
RISK_COVERAGE = "risk_coverage.png"
TENSORBOARD_DIR = "tensorboard"  # --log tensorboard: event files
TRACKING = "tracking.json"  # --log mlflow: {"mlflow": {"uri", "run_id"}}, the run a --resume continues


def eval_json(split: str) -> str:
    """eval_<split>.json: the evaluation of a split."""
    return f"eval_{split}.json"


def evaluation_figures(split: str) -> dict[str, str]:
    """The figures of a split's evaluation, by what they show."""
    return {"confusion_matrix": f"confusion_matrix_{split}.png", "top_losses": f"top_losses_{split}.png",
            "top_losses_gradcam": f"top_losses_{split}_gradcam.png", "reliability": f"reliability_{split}.png",
            "top_losses_evidence": f"top_losses_{split}_evidence.png"}  # bag runs: the tiles attended to


# skipped_steps: steps whose loss was not finite (nan/inf), so the weights were not updated from them;
# side: the image (or tile) side the epoch trained at (progressive resizing starts smaller);
# fraction: the share of the epoch's batches trained (below 1 only where a --time budget ended the run mid-epoch)
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "skipped_steps",
                  "side", "fraction")
# Files (and patterns) a run writes anywhere in its life: what --overwrite removes, and what marks a
# folder as holding a run. Anything else in the folder is the user's and is left alone.
RUN_FILE_PATTERNS = (CONFIG, CLASSES, DATASET, MODEL, METRICS, CURVES, BEST, LAST, CHECKPOINT, DIAGNOSIS, SUMMARY,
                     REPORT, AUGMENT_PREVIEW, LR_FIND_PNG, LR_FIND_JSON, IMAGE_SIZES, eval_json("*"),
                     *evaluation_figures("*").values(), REJECT, RISK_COVERAGE, GRADCAM, INSPECT, ONNX,
                     ONNX_METADATA, ONNX_INT8, ONNX_INT8_METADATA, TENSORBOARD_DIR, TRACKING)
RUN_MARKERS = (CONFIG, MODEL, METRICS, CHECKPOINT, BEST, LAST)


# --- writers: one per file ---------------------------------------------------------------------------------------------
def write_config(run_dir: Path, config: dict) -> None:
    """config.yaml: the resolved options."""
    write_yaml(Path(run_dir) / CONFIG, config)


def write_classes(run_dir: Path, classes: list[str]) -> None:
    """classes.json."""
    write_json(Path(run_dir) / CLASSES, classes)


def write_model(run_dir: Path, metadata: dict) -> None:
    """model.json: what model_metadata returns."""
    write_json(Path(run_dir) / MODEL, metadata)


def write_dataset(run_dir: Path, info: dict) -> None:
    """dataset.json."""
    write_json(Path(run_dir) / DATASET, info)


def write_diagnosis(run_dir: Path, diagnosis: dict, inputs: dict) -> None:
    """diagnosis.json: the verdict (Diagnosis.to_dict()) and the inputs it was judged on, so that it can be judged
    again from the folder alone."""
    write_json(Path(run_dir) / DIAGNOSIS, diagnosis | {"inputs": inputs})


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json: the layer table."""
    write_json(Path(run_dir) / SUMMARY, summary)


def write_evaluation(run_dir: Path, split: str, evaluation: dict) -> None:
    """eval_<split>.json."""
    write_json(Path(run_dir) / eval_json(split), evaluation)


def write_reject(run_dir: Path, threshold: dict) -> None:
    """reject.json: the unknown threshold, how it was chosen, and the risk-coverage curve it was chosen on."""
    write_json(Path(run_dir) / REJECT, threshold)


def write_lr_find(run_dir: Path, result: dict) -> None:
    """lr_find.json: the range test's curve and suggestion."""
    write_json(Path(run_dir) / LR_FIND_JSON, result)


def model_metadata(model_name: str, model_options: dict, classes: list[str], img_size: int,
                   preprocessing: dict) -> dict:
    """The dict stored as model.json and inside each .safetensors file."""
    return {"model": model_name, "model_options": model_options, "num_classes": len(classes),
            "classes": classes, "img_size": img_size, "preprocessing": preprocessing,
            "format": "cnnlab-1"}


def holds_run(folder: Path) -> bool:
    """True if `folder` already holds (part of) a cnnlab run."""
    return any((folder / name).exists() for name in RUN_MARKERS)


def clear_run(folder: Path) -> list[str]:
    """Remove every file a run writes from `folder` (--overwrite); returns what was removed."""
    removed = []
    for pattern in RUN_FILE_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def new_run_dir(out: str | None, model: str, overwrite: bool = False) -> Path:
    """The run folder for a new run, created; refuses one that holds a run unless `overwrite`.

    Without `out`: runs/<model>-<YYYYmmdd-HHMMSS>, with a suffix when two runs start in the same second.
    """
    if out:
        run_dir = Path(out).expanduser().absolute()
        if run_dir.exists() and not run_dir.is_dir():
            raise CnnlabError(f"--out {run_dir} is a file; give a folder for the run")
        if run_dir.is_dir() and holds_run(run_dir):
            if not overwrite:
                raise CnnlabError(f"{run_dir} already holds a run; continue it with `cnnlab train --resume "
                                  f"{run_dir}`, replace it with --overwrite (its files are deleted), or choose "
                                  "another --out folder")
            clear_run(run_dir)
    else:
        base = Path("runs").absolute() / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir, n = base, 1
        while run_dir.exists():
            n += 1
            run_dir = base.with_name(f"{base.name}-{n}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnlabError(f"cannot create the run folder {run_dir}: {error.strerror or error}") from None
    remove_stale_temporaries(run_dir)
    return run_dir


def discard_unstarted(run_dir: Path, created: bool) -> None:
    """After a new run failed before its first checkpoint: remove the files it wrote (config.yaml, model.json...),
    and its folder if the run created it and nothing else is in it, so that the same --out can be used again.
    A run with a checkpoint is kept: --resume continues it."""
    if (run_dir / CHECKPOINT).exists() or not run_dir.is_dir():
        return
    clear_run(run_dir)
    if created and not any(run_dir.iterdir()):
        run_dir.rmdir()


def write_metrics(run_dir: str | os.PathLike, history: list[dict]) -> None:
    """Rewrite metrics.csv from the whole history (small; keeps the file consistent after a resume)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
    atomic_write(Path(run_dir) / METRICS, write)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
