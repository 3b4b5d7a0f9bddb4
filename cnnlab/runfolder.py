"""A run folder describes itself: config, classes, metrics, weights and model metadata, in open formats.

    RUN/config.yaml          every training option, resolved
    RUN/classes.json         class names, index order = model output order
    RUN/dataset.json         where the data came from: split sizes, per-class counts
    RUN/metrics.csv          one row per epoch (METRIC_COLUMNS)
    RUN/learning_curves.png  loss and accuracy, train vs val (rewritten each epoch)
    RUN/best.safetensors     weights with the lowest validation loss
    RUN/last.safetensors     weights after the last finished epoch
    RUN/model.json           model name, options, classes, preprocessing: enough to rebuild and predict
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from cnnlab.checkpoint import atomic_write, load_weights, save_weights
from cnnlab.errors import CnnlabError

# skipped_steps: steps whose loss was not finite (nan/inf), so the weights were not updated from them
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "skipped_steps")


def write_text(path: Path, text: str) -> None:
    """Atomically replace a small text file."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


def write_json(path: Path, data: Any) -> None:
    """Atomically write pretty JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: Path, data: dict) -> None:
    """Atomically write YAML (keys in insertion order)."""
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_json(path: Path) -> Any:
    """Read JSON, turning a missing or broken file into a CnnlabError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnnlabError(f"{path} is missing; is {Path(path).parent} a cnnlab run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CnnlabError(f"{path} is not valid JSON ({error})") from None


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.csv from the whole history (small; keeps the file consistent after a resume)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
    atomic_write(Path(run_dir) / "metrics.csv", write)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """metrics.csv as a list of dicts with numbers (epoch int, the rest float)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (int(v) if k == "epoch" else float(v) if v not in ("", None) else math.nan)
             for k, v in row.items()} for row in rows]


@dataclass
class RunInfo:
    """What model.json says about a run's model."""

    run_dir: Path
    model: str
    model_options: dict
    classes: list[str]
    img_size: int
    preprocessing: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def model_metadata(model_name: str, model_options: dict, classes: list[str], img_size: int,
                   preprocessing: dict) -> dict:
    """The dict stored as model.json and inside each .safetensors file."""
    return {"model": model_name, "model_options": model_options, "num_classes": len(classes),
            "classes": classes, "img_size": img_size, "preprocessing": preprocessing,
            "format": "cnnlab-1"}


def read_run_info(run_dir: str | os.PathLike) -> RunInfo:
    """Parse model.json of a run folder, with clear errors for a folder that is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"run folder {run_dir} does not exist; give the --out folder of a `cnnlab train` run")
    meta = read_json(run_dir / "model.json")
    try:
        return RunInfo(run_dir, meta["model"], meta.get("model_options", {}), list(meta["classes"]),
                       int(meta["img_size"]), meta.get("preprocessing", {}))
    except (KeyError, TypeError, ValueError) as error:
        raise CnnlabError(f"{run_dir / 'model.json'} is incomplete ({error})") from None


def weights_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Path of best/last weights, or a clear error if the run has none yet."""
    run_dir = Path(run_dir)
    path = run_dir / f"{which}.safetensors"
    if not path.exists():
        other = run_dir / ("last.safetensors" if which == "best" else "best.safetensors")
        if other.exists():
            return other
        raise CnnlabError(f"run folder {run_dir} has no weights ({which}.safetensors); "
                          "train first, or let the run finish at least one epoch")
    return path


def load_model(run_dir: str | os.PathLike, which: str = "best") -> tuple[torch.nn.Module, RunInfo]:
    """Rebuild a run's model from model.json and load its weights (eval mode, CPU)."""
    from cnnlab.models import create_model

    info = read_run_info(run_dir)
    model = create_model(info.model, info.num_classes, **info.model_options)
    state, _ = load_weights(weights_path(run_dir, which))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CnnlabError(f"weights in {run_dir} do not fit model '{info.model}': {str(error)[:300]}") from None
    model.eval()
    return model, info


__all__ = ["METRIC_COLUMNS", "RunInfo", "load_model", "model_metadata", "read_json", "read_metrics",
           "read_run_info", "save_weights", "weights_path", "write_json", "write_metrics", "write_yaml"]
