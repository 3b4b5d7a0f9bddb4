"""Evaluate a trained run on a split: accuracy, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from cnnlab import plots
from cnnlab.data import DatasetSplits, ImageDataset, find_samples
from cnnlab.device import default_workers, resolve_device, resolve_precision
from cnnlab.errors import CnnlabError
from cnnlab.inference import collect_logits, loss_and_accuracy
from cnnlab.loaders import make_loader
from cnnlab.runfolder import RunInfo, load_model, write_json
from cnnlab.transforms import decode_size, eval_transform


@dataclass
class EvalResult:
    """Metrics of one split; `per_class` rows have class, precision, recall, f1, support."""

    run_dir: Path
    split: str
    accuracy: float
    loss: float
    per_class: list[dict]
    confusion: np.ndarray  # (K, K): rows = true class, columns = predicted class
    classes: list[str]
    paths: list[str]
    probabilities: np.ndarray  # (N, K)
    labels: np.ndarray  # (N,)

    def to_dict(self) -> dict:
        """JSON-ready summary (without per-image arrays)."""
        return {"split": self.split, "accuracy": self.accuracy, "loss": self.loss, "images": int(len(self.labels)),
                "classes": self.classes, "per_class": self.per_class,
                "macro_f1": float(np.mean([row["f1"] for row in self.per_class])),
                "confusion_matrix": self.confusion.tolist()}

    def describe(self) -> str:
        """A table for the terminal."""
        width = max(len(c) for c in self.classes + ["class"])
        lines = [f"{self.split}: accuracy {self.accuracy:.4f} on {len(self.labels)} images, loss {self.loss:.4f}",
                 f"{'class':<{width}}  precision  recall  f1     support"]
        for row in self.per_class:
            lines.append(f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                         f"{row['f1']:.3f}  {row['support']:7d}")
        return "\n".join(lines)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts; entry [t, p] = images of true class t predicted as p."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_metrics(matrix: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return [{"class": name, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(support[i])} for i, name in enumerate(classes)]


def run_config(run_dir: str | os.PathLike) -> dict:
    """The run's resolved config.yaml as a dict (empty if missing)."""
    path = Path(run_dir) / "config.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}


def load_split(run_dir: Path, info: RunInfo, data: str | None, split: str) -> tuple[DatasetSplits, list]:
    """The samples of `split`, found the same way (val_fraction, seed) as during training."""
    config = run_config(run_dir)
    data = data or config.get("data")
    if not data:
        raise CnnlabError(f"no data folder: pass --data DIR (the run's config.yaml names none)")
    splits = find_samples(data, val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0))
    if splits.classes != info.classes:
        raise CnnlabError(f"the classes in {data} ({', '.join(splits.classes)}) differ from the run's "
                          f"({', '.join(info.classes)}); evaluate on data with the same class folders")
    if split not in splits.splits or not splits.splits[split]:
        raise CnnlabError(f"{data} has no '{split}' split (it has: {', '.join(splits.splits)}); "
                          f"use --split val, or add a {split}/ folder")
    return splits, splits.splits[split]


def evaluate(run_dir: str | os.PathLike, data: str | None = None, split: str = "val", which: str = "best",
             batch_size: int = 64, device: str = "auto", workers: int | None = None,
             verbose: bool = True) -> EvalResult:
    """Evaluate a run's weights on a split; writes eval_<split>.json and confusion_matrix_<split>.png."""
    run_dir = Path(run_dir)
    model, info = load_model(run_dir, which)
    torch_device = resolve_device(device)
    precision = resolve_precision("auto", torch_device)
    model = model.to(torch_device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    _, samples = load_split(run_dir, info, data, split)
    dataset = ImageDataset(samples, eval_transform(info.img_size), decode_size=decode_size(info.img_size))
    loader = make_loader(dataset, batch_size, default_workers() if workers is None else workers, train=False)
    logits, labels, indices = collect_logits(model, loader, torch_device, precision, f"eval {split}", show_progress=verbose)
    if len(labels) == 0:
        raise CnnlabError(f"no readable images in the {split} split")
    loss, accuracy = loss_and_accuracy(logits, labels)
    predictions = logits.argmax(1).numpy()
    matrix = confusion_matrix(labels.numpy(), predictions, info.num_classes)
    readable = [samples[i].path for i in indices.tolist()]
    result = EvalResult(run_dir, split, accuracy, loss, per_class_metrics(matrix, info.classes), matrix,
                        info.classes, readable, torch.softmax(logits, 1).numpy(), labels.numpy())
    write_json(run_dir / f"eval_{split}.json", result.to_dict() | {"weights": which})
    plots.confusion_matrix(matrix, info.classes, run_dir / f"confusion_matrix_{split}.png",
                           title=f"{info.model} on {split}: accuracy {accuracy:.3f}")
    return result
