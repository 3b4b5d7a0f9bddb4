"""The one reader of a run folder: `read_run(run_dir)` gives a typed RunRecord of what training wrote
(cnnlab.training.record lists the files), and `load_model` rebuilds the model with its weights.

Evaluate, predict, inspect, the report, export and resume read a run through here only, so what they
apply (model, classes, preprocessing) is what the run recorded, not today's defaults.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab.config import TrainConfig
from cnnlab.data.transforms import Preprocessing
from cnnlab.errors import CnnlabError
from cnnlab.files import read_json, read_yaml
from cnnlab.models import create_model
from cnnlab.models.weights import load_weights
from cnnlab.runs.diagnosis import Diagnosis, diagnose
from cnnlab.training.record import BEST, CLASSES, CONFIG, DATASET, DIAGNOSIS, LAST, METRICS, MODEL


@dataclass
class RunRecord:
    """What a run folder says about its run."""

    run_dir: Path
    config: TrainConfig | None
    """config.yaml as a TrainConfig (None for a folder with model.json only, e.g. copied weights)."""
    model: str
    model_options: dict
    classes: list[str]
    img_size: int
    preprocessing: Preprocessing
    """How images are prepared for this model, as stored with the weights."""
    dataset: dict
    """dataset.json: root, split source, counts, image sizes, unreadable files ({} if missing)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def data_dir(self, data: str | None = None) -> str:
        """The data folder (or label file) to read: `data` if given, else the one the run was trained on, checked to
        exist."""
        if data:
            return str(data)
        recorded = (self.config.data if self.config else "") or self.dataset.get("root", "")
        if not recorded:
            raise CnnlabError(f"no data folder: pass --data DIR ({self.run_dir / CONFIG} names none)")
        if not Path(recorded).exists():
            raise CnnlabError(f"the data folder this run was trained on, {recorded}, no longer exists (moved or "
                              "deleted?); pass --data with its new place")
        return recorded


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    """Parse a run folder's model.json, config.yaml, classes.json and dataset.json, with clear errors for a
    folder that is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"run folder {run_dir} does not exist; give the --out folder of a `cnnlab train` run")
    meta = read_json(run_dir / MODEL)
    config = None
    if (run_dir / CONFIG).is_file():
        values = read_yaml(run_dir / CONFIG)
        if not isinstance(values, dict):
            raise CnnlabError(f"{run_dir / CONFIG} is not a mapping of option: value")
        config = TrainConfig.from_dict(values)
    try:
        img_size = int(meta["img_size"])
        classes = list(read_json(run_dir / CLASSES)) if (run_dir / CLASSES).is_file() else list(meta["classes"])
        record = RunRecord(run_dir, config, meta["model"], dict(meta.get("model_options", {})), classes, img_size,
                           Preprocessing.from_dict(meta.get("preprocessing", {}), img_size),
                           read_json(run_dir / DATASET) if (run_dir / DATASET).is_file() else {})
    except (KeyError, TypeError, ValueError) as error:
        raise CnnlabError(f"{run_dir / MODEL} is incomplete ({error})") from None
    return record


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """metrics.csv as a list of dicts with numbers (epoch int, the rest float); [] if there is none."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (int(v) if k == "epoch" else float(v) if v not in ("", None) else math.nan)
             for k, v in row.items()} for row in rows]


def read_optional_json(path: Path) -> Any:
    """A JSON file of the run folder, or None when it is missing or broken (the report shows what is there)."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except CnnlabError:
        return None


def weights_path(run_dir: str | os.PathLike, which: str = "best") -> Path:
    """Path of best/last weights, or a clear error if the run has none yet."""
    if which not in ("best", "last"):
        raise CnnlabError(f"--which {which!r}: choose best (lowest validation loss) or last (last epoch)")
    run_dir = Path(run_dir)
    path = run_dir / (BEST if which == "best" else LAST)
    if not path.exists():
        other = run_dir / (LAST if which == "best" else BEST)
        if other.exists():
            return other
        raise CnnlabError(f"run folder {run_dir} has no weights ({path.name}); "
                          "train first, or let the run finish at least one epoch")
    return path


def load_model(run_dir: str | os.PathLike, which: str = "best") -> tuple[torch.nn.Module, RunRecord]:
    """Rebuild a run's model from model.json and load its weights (eval mode, CPU)."""
    record = read_run(run_dir)
    model = create_model(record.model, record.num_classes, **record.model_options)
    state, _ = load_weights(weights_path(run_dir, which))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CnnlabError(f"weights in {run_dir} do not fit model '{record.model}': {str(error)[:300]}") from None
    model.eval()
    return model, record


# diagnose()'s arguments that come from the run's options: what advice must know the run had on
SETUP_INPUTS = ("time_budget", "augment", "dropout", "pretrained", "weights", "img_size", "patience")


def diagnosis_inputs(config: TrainConfig | None, val_counts: dict[str, int], num_classes: int) -> dict[str, Any]:
    """diagnose()'s arguments besides the history, as finish() records them in diagnosis.json's inputs: the
    validation images per class that were read, the number of classes, and the run's options (None if unknown)."""
    inputs = {"val_size": sum(val_counts.values()), "num_classes": num_classes, "val_counts": dict(val_counts)}
    if config is None:
        return inputs | dict.fromkeys(SETUP_INPUTS)
    return inputs | {"time_budget": config.time, "augment": config.augment, "dropout": config.dropout,
                     "pretrained": config.pretrained, "weights": config.weights,
                     "img_size": None if config.tile else config.img_size,  # a tiled run's size is --tile's
                     "patience": config.patience}


def diagnose_run(run_dir: str | os.PathLike) -> Diagnosis:
    """The verdict on a run, from its files: the same call finish() made (its learning curves and the inputs
    diagnosis.json records), so it reproduces diagnosis.json; what an older diagnosis.json lacks comes from
    dataset.json (validation images per class) and config.yaml (the run's options)."""
    record = read_run(run_dir)
    recorded = (read_optional_json(Path(run_dir) / DIAGNOSIS) or {}).get("inputs", {})
    counts = record.dataset.get("counts", {}).get("val", {})
    inputs = diagnosis_inputs(record.config, counts, record.num_classes)
    # the images that were read: the split's count less the unreadable ones (their classes are not recorded)
    unreadable = len(record.dataset.get("unreadable", {}).get("val", []))
    inputs["val_size"] = sum(counts.values()) - unreadable if counts else None
    inputs["val_counts"] = counts or None
    inputs |= {name: value for name, value in recorded.items() if name in inputs}
    return diagnose(read_metrics(run_dir), **inputs)
