"""A run's logits on a split, evaluated: accuracy, per-class precision/recall/F1, confusion matrix, and what it gets
wrong (most-confused pairs, highest-loss images with their Grad-CAM, calibration; cnnlab.runs.interpret), written
as eval_<split>.json and its plots. `cnnlab eval` (cnnlab.commands.evaluate) and the end of training use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab import plots
from cnnlab.config import check_choice
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample, find_samples
from cnnlab.errors import CnnlabError
from cnnlab.runs import interpret
from cnnlab.runs.display import GALLERY_SIDE, shrink
from cnnlab.runs.explain import Explanation, evidence_panels, explain_batch, explain_image, overlay_image
from cnnlab.runs.inference import TrainedModel
from cnnlab.runs.reader import RunRecord
from cnnlab.runs.report import evaluation_table
from cnnlab.training.forward import Logits
from cnnlab.training.record import evaluation_figures
from cnnlab.training.record import write_evaluation as record_evaluation


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
    losses: np.ndarray | None = None  # (N,) cross-entropy of each image
    most_confused: list[dict] = field(default_factory=list)  # see interpret.most_confused
    calibration: dict = field(default_factory=dict)  # see interpret.calibration: ece, bins
    top_losses: list[dict] = field(default_factory=list)  # highest loss first: path, true, predicted, ...
    files: dict = field(default_factory=dict)  # what -> file name in the run folder
    weights: str = "best"  # the weights evaluated: best or last

    def to_dict(self) -> dict:
        """JSON-ready summary (without per-image arrays)."""
        return {"split": self.split, "accuracy": self.accuracy, "loss": self.loss, "images": int(len(self.labels)),
                "classes": self.classes, "per_class": self.per_class,
                "macro_f1": float(np.mean([row["f1"] for row in self.per_class])),
                "confusion_matrix": self.confusion.tolist(),
                "confusion_matrix_normalised": normalise_rows(self.confusion).round(4).tolist(),
                "most_confused": self.most_confused, "calibration": self.calibration,
                "top_losses": self.top_losses, "files": self.files}

    def describe(self) -> str:
        """A table for the terminal."""
        width = max(len(c) for c in self.classes + ["class"])
        lines = [f"{self.split}: accuracy {self.accuracy:.4f} on {len(self.labels)} images, loss {self.loss:.4f}",
                 f"{'class':<{width}}  precision  recall  f1     support"]
        for row in self.per_class:
            lines.append(f"{row['class']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                         f"{row['f1']:.3f}  {row['support']:7d}")
        if self.most_confused:
            lines.append("most confused: " + "; ".join(
                f"{row['true']} -> {row['predicted']} {row['count']}x ({100 * row['share_of_true']:.0f}% of "
                f"{row['true']})" for row in self.most_confused[:3]))
        if self.calibration:
            lines.append(f"expected calibration error {self.calibration['ece']:.3f} (0 = confidence matches "
                         f"accuracy; mean confidence {self.calibration['mean_confidence']:.3f})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """In a notebook: the metrics as the run report's Per class section shows them."""
        return evaluation_table(self.to_dict() | {"weights": self.weights})


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts; entry [t, p] = images of true class t predicted as p."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (recall per true class); rows without images stay 0."""
    rows = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)


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


SPLITS = ("val", "test", "train")


def split_samples(record: RunRecord, data: str | None, split: str) -> list[Sample]:
    """The samples of `split`, found the same way (val_fraction, seed) as during training."""
    check_choice("split", split, SPLITS)
    data_dir = record.data_dir(data)
    config = record.config
    splits = find_samples(data_dir, val_fraction=config.val_fraction if config else 0.2,
                          seed=config.seed if config else 0)
    if splits.classes != record.classes:
        raise CnnlabError(f"the classes in {data_dir} ({', '.join(splits.classes)}) differ from the run's "
                          f"({', '.join(record.classes)}); evaluate on data with the same class folders")
    if not splits.splits.get(split):
        raise CnnlabError(f"{data_dir} has no '{split}' split (it has: {', '.join(splits.splits)}); "
                          f"use --split val, or add a {split}/ folder")
    return splits.splits[split]


def write_evaluation(record: RunRecord, split: str, which: str, dataset: ImageDataset, outputs: Logits,
                     top_losses: int = 16, tta: bool = False, explainer: TrainedModel | None = None) -> EvalResult:
    """Metrics, most-confused pairs, top losses and calibration of `outputs` (logits of `dataset`'s images);
    writes eval_<split>.json and its three plots into the run folder, and with `explainer` (the model that
    produced the logits) the Grad-CAM of each top-loss image next to it."""
    run_dir, classes = record.run_dir, record.classes
    logits, labels, indices = outputs.logits, outputs.labels, outputs.indices
    loss, accuracy = outputs.loss_and_accuracy()
    predictions = logits.argmax(1).numpy()
    matrix = confusion_matrix(labels.numpy(), predictions, len(classes))
    readable = [dataset.samples[i].path for i in indices.tolist()]
    result = EvalResult(run_dir, split, accuracy, loss, per_class_metrics(matrix, classes), matrix,
                        classes, readable, torch.softmax(logits, 1).numpy(), labels.numpy(), weights=which)
    result.losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none").numpy()  # (N,)
    result.most_confused = interpret.most_confused(matrix, classes)
    result.calibration = interpret.calibration(result.probabilities, result.labels)
    order = interpret.top_losses(result.losses, top_losses)  # positions in the (N,) arrays
    result.top_losses = [loss_row(result, k) for k in order]
    figures = evaluation_figures(split)
    result.files = {key: figures[key] for key in ("confusion_matrix", "top_losses", "reliability")}
    plots.confusion_matrix(matrix, classes, run_dir / result.files["confusion_matrix"],
                           title=f"{record.model} on {split}: accuracy {accuracy:.3f}")
    plots.reliability_diagram(result.calibration["bins"], result.calibration["ece"],
                              run_dir / result.files["reliability"], title=f"{record.model} on {split}")
    top_losses_gallery(dataset, indices[order].tolist(), result.top_losses, run_dir / result.files["top_losses"],
                       title=f"{record.model} on {split}: the {len(order)} images with the highest loss")
    if explainer is not None and explainer.model.stage_modules():
        result.files["top_losses_gradcam"] = figures["top_losses_gradcam"]
        explanations = top_losses_gradcam(explainer, dataset, indices[order].tolist(), result.top_losses,
                                          run_dir / result.files["top_losses_gradcam"],
                                          title="Grad-CAM of the predicted class: where the network saw it (same "
                                                "order)")
        if explainer.preprocessing.bags and explanations:
            result.files["top_losses_evidence"] = figures["top_losses_evidence"]
            evidence_grid(explanations, run_dir / result.files["top_losses_evidence"])
    record_evaluation(run_dir, split, result.to_dict() | {"weights": which, "tta": tta})
    return result


def loss_row(result: EvalResult, k: int) -> dict:
    """One image of the top-losses list: file, true and predicted class with their probabilities, loss."""
    true, predicted = int(result.labels[k]), int(result.probabilities[k].argmax())
    return {"path": result.paths[k], "true": result.classes[true], "predicted": result.classes[predicted],
            "probability_true": float(result.probabilities[k, true]),
            "probability_predicted": float(result.probabilities[k, predicted]), "loss": float(result.losses[k])}


def top_losses_gallery(dataset: ImageDataset, dataset_indices: list[int], rows: list[dict], path: Path,
                       title: str) -> Path:
    """The images as the network saw them (resized and centre-cropped to img_size), titled from `rows`."""
    images, titles, wrong = [], [], []
    for index, row in zip(dataset_indices, rows):
        item = dataset[index]  # (uint8 (3, S, S), label, index, seed), or None if the file went bad since
        if item is None:
            continue
        images.append(shrink(item[0], GALLERY_SIDE).permute(1, 2, 0).numpy())  # (S, S, 3) uint8
        name = Path(row["path"]).name
        name = name if len(name) <= 24 else name[:10] + "..." + name[-11:]
        titles.append(f"{name}\ntrue {row['true']} ({row['probability_true']:.2f})\n"
                      f"pred {row['predicted']} ({row['probability_predicted']:.2f})")
        wrong.append(row["predicted"] != row["true"])
    return plots.top_losses_gallery(images, titles, wrong, path, suptitle=title)


def top_losses_gradcam(explainer: TrainedModel, dataset: ImageDataset, dataset_indices: list[int], rows: list[dict],
                       path: Path, title: str) -> list[Explanation]:
    """The top-loss images with the Grad-CAM of their predicted class over them (stitched for tiled runs), written
    to `path`; their explanations (bag runs: with their evidence tiles)."""
    classes = explainer.record.classes
    items = [(dataset[index], index, row) for index, row in zip(dataset_indices, rows)]
    items = [(item, index, row) for item, index, row in items if item is not None]
    targets = [classes.index(row["predicted"]) for _, _, row in items]
    if explainer.preprocessing.tile:  # whole images of any size: one stitched map each
        explanations = [explain_image(explainer, item[0], dataset.samples[index].path, target)
                        for (item, index, _), target in zip(items, targets)]
    else:  # same-size crops: one Grad-CAM pass for all of them
        explanations = explain_batch(explainer, [item[0] for item, _, _ in items], targets)
    images = [overlay_image(explanation) for explanation in explanations]
    titles = [f"{Path(row['path']).name[:24]}\nCAM of pred {row['predicted']}\n(true {row['true']})"
              for _, _, row in items]
    wrong = [row["predicted"] != row["true"] for _, _, row in items]
    plots.top_losses_gallery(images, titles, wrong, path, suptitle=title)
    return explanations


# The report's evidence figure: the first rows of the top losses, each the tiles its bag attended to most.
EVIDENCE_ROWS = 4
EVIDENCE_COLUMNS = 4


def evidence_grid(explanations: list[Explanation], path: Path) -> Path:
    """Bag runs: for each of the first EVIDENCE_ROWS top-loss images, its EVIDENCE_COLUMNS tiles of most attention
    with their Grad-CAM, one row per image (a blank cell where a bag kept fewer tiles)."""
    panels, titles = [], []
    for explanation in explanations[:EVIDENCE_ROWS]:
        tiles, labels = evidence_panels(explanation)
        blank = np.full_like(tiles[0], 255) if tiles else None
        for k in range(EVIDENCE_COLUMNS):
            panels.append(tiles[k] if k < len(tiles) else blank)
            labels_k = labels[k] if k < len(labels) else ""
            titles.append((f"{Path(explanation.path).name[:20]}\n" if k == 0 else "\n") + labels_k)
    return plots.image_grid(panels, titles, path, columns=EVIDENCE_COLUMNS, cell=2.4,  # room for 3-line titles
                            suptitle="The tiles each bag attended to most (same order as the top losses)")
