"""All plotting lives here (the only module that imports matplotlib). Every function writes a PNG
and closes its figure, so long runs do not accumulate memory."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curves(history: list[dict], path: str | os.PathLike, title: str = "",
                    best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch, train vs val, side by side."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label=f"train {label}", ms=3)
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "s-", label=f"val {label}", ms=3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_ylim(0, 1.02)
    if len(epochs) == 1:
        for ax in (ax_loss, ax_acc):
            ax.set_xlim(0.5, 1.5)
    fig.suptitle(title or "learning curves")
    return _save(fig, path)


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: str | os.PathLike,
                     title: str = "confusion matrix") -> Path:
    """Counts and row-normalised (recall per true class) side by side; rows = true, columns = predicted."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    n = len(classes)
    side = max(4.0, 0.55 * n + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, data, name, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "normalised per true class", ".2f")):
        image = ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if data.max() > 0 else 1)
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=10)
        if n <= 30:
            threshold = data.max() / 2 if data.max() > 0 else 0.5
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if data[i, j] > threshold else "black")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title)
    return _save(fig, path)


def image_grid(images: list[np.ndarray], titles: list[str] | None, path: str | os.PathLike,
               columns: int | None = None, suptitle: str = "", cmap: str | None = None,
               cell: float = 1.8) -> Path:
    """A grid of images (H, W, 3) floats in 0..1 or uint8, or (H, W) shown with `cmap`."""
    n = len(images)
    columns = columns or min(n, 8)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(cell * columns, cell * rows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], cmap=cmap if images[k].ndim == 2 else None)
            if titles:
                ax.set_title(titles[k], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)
