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
from matplotlib.ticker import MaxNLocator  # noqa: E402


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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers: no tick at 1.5
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
    # constrained layout: the left colorbar must not run into the right panel's class names
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), layout="constrained")
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


# --------------------------------------------------------------------------------------------
# LR finder
# --------------------------------------------------------------------------------------------

def lr_find_curve(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float,
                  path: str | os.PathLike, title: str = "LR range test") -> Path:
    """Training loss vs learning rate (log x-axis): raw and smoothed, the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(lrs, losses, color="lightgrey", lw=1, label="loss per batch")
    ax.plot(lrs, smoothed, lw=2, label="smoothed loss")
    ax.axvline(suggestion, color="tab:red", ls="--", lw=1, label=f"suggested lr {suggestion:.1e}")
    ax.set_xscale("log")
    finite = [v for v in smoothed if math.isfinite(v)]
    if finite:
        # the raw loss explodes at the end; keep the interesting part of the curve in view
        low, high = min(finite), max(finite[: max(1, len(finite) // 10)] + [finite[0]])
        ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.6 * (high - low + 1e-9))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# MLP vs CNN comparison
# --------------------------------------------------------------------------------------------

def compare_models(histories: dict[str, list[dict]], parameters: dict[str, int],
                   path: str | os.PathLike, title: str = "", chance: float | None = None) -> Path:
    """Validation accuracy per epoch for each model (and the chance level), and each model's parameter
    count (log scale)."""
    # constrained layout: the log-scale tick labels of the right panel must not run into its y-label
    fig, (ax_acc, ax_params) = plt.subplots(1, 2, figsize=(10.5, 4.0), gridspec_kw={"width_ratios": [3, 2]},
                                            layout="constrained")
    for name, history in histories.items():
        ax_acc.plot([row["epoch"] for row in history], [row["val_acc"] for row in history], "o-", ms=3,
                    label=name)
    if chance is not None:
        ax_acc.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2f})")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_ylim(0, 1.02)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    names = list(parameters)
    bars = ax_params.bar(names, [parameters[name] for name in names], color="tab:grey")
    ax_params.bar_label(bars, labels=[f"{parameters[name] / 1e6:.2f} M" for name in names], fontsize=8)
    ax_params.set_yscale("log")
    ax_params.set_ylabel("parameters (log scale)")
    ax_params.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title or "models compared on the same data and budget")
    return _save(fig, path)


# --- interpretation (issue 4): top-losses gallery, reliability diagram -----------------------------------------
def top_losses_gallery(images: list[np.ndarray], titles: list[str], wrong: list[bool], path: str | os.PathLike,
                       suptitle: str = "", columns: int = 6, cell: float = 2.6, side: int = 160) -> Path:
    """Images (H, W, 3) (uint8 or 0..1) with multi-line captions, red where the prediction was wrong, green
    where right. One mosaic in one axes (each image letterboxed into a `side` px square): a figure with one
    axes per image took ~1.4 s to draw, which every run pays at its end."""
    n = max(1, len(images))
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    caption = 60  # px under each image for three lines of text
    pad = 6
    mosaic = np.ones((rows * (side + caption + pad) + pad, columns * (side + pad) + pad, 3))
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        picture = np.asarray(image, dtype=np.float64)
        picture = picture / 255.0 if picture.max() > 1.0 else picture
        h, w = picture.shape[:2]
        factor = side / max(h, w)
        rows_i = np.minimum((np.arange(max(1, round(h * factor))) / factor).astype(int), h - 1)
        cols_i = np.minimum((np.arange(max(1, round(w * factor))) / factor).astype(int), w - 1)
        small = picture[rows_i][:, cols_i]  # nearest-neighbour shrink: exact pixels, no blur
        top = pad + r * (side + caption + pad) + (side - small.shape[0]) // 2
        left = pad + c * (side + pad) + (side - small.shape[1]) // 2
        mosaic[top:top + small.shape[0], left:left + small.shape[1]] = small[..., :3]
    height_px, width_px = mosaic.shape[:2]
    scale = cell / side
    fig, ax = plt.subplots(figsize=(width_px * scale, height_px * scale + (0.4 if suptitle else 0.1)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    for k, title in enumerate(titles[:len(images)]):
        r, c = divmod(k, columns)
        ax.text(pad + c * (side + pad) + side / 2, pad + r * (side + caption + pad) + side + 4, title,
                ha="center", va="top", fontsize=9, color="#b42318" if wrong[k] else "#1a7f37")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def reliability_diagram(bins: list[dict], ece: float, path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with the image count per bin.

    `bins` as cnnlab.runs.interpret.calibration returns them: lower, upper, count, confidence, accuracy (None if empty).
    """
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.2, 5.6), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    filled = [b for b in bins if b["count"] > 0]
    left = [b["lower"] for b in filled]
    width = [b["upper"] - b["lower"] for b in filled]
    accuracy = [b["accuracy"] for b in filled]
    confidence = [b["confidence"] for b in filled]
    ax.bar(left, accuracy, width=width, align="edge", color="#4c78a8", edgecolor="white", label="accuracy")
    # the gap between a bin's mean confidence and its accuracy is what ECE adds up
    ax.bar(left, [c - a for c, a in zip(confidence, accuracy)], bottom=accuracy, width=width, align="edge",
           color="#e45756", alpha=0.35, edgecolor="#e45756", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{title + ': ' if title else ''}ECE {ece:.3f}", fontsize=10)
    ax_count.bar([b["lower"] for b in bins], [b["count"] for b in bins],
                 width=[b["upper"] - b["lower"] for b in bins], align="edge", color="#9d9d9d", edgecolor="white")
    ax_count.set_xlabel("confidence (top-1 probability)")
    ax_count.set_ylabel("images")
    ax_count.grid(alpha=0.3)
    return _save(fig, path)


def risk_coverage(coverage: list[float], accuracy: list[float], chosen_coverage: float, chosen_accuracy: float,
                  threshold: float, target: float, path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy of the kept predictions against the share of images kept (surest first), with the chosen threshold
    marked and the target precision as a dashed line (cnnlab.runs.reject)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.step(coverage, accuracy, where="post", color="#4c78a8", lw=1.6, label="accuracy of the answered images")
    ax.axhline(target, ls="--", color="grey", lw=1, label=f"target precision {target:.3f}")
    ax.plot([chosen_coverage], [chosen_accuracy], "o", color="#e45756", ms=8,
            label=f"threshold {threshold:.3f}: {chosen_coverage:.0%} answered, {chosen_accuracy:.1%} right")
    ax.axvspan(chosen_coverage, 1, color="#e45756", alpha=0.08, lw=0)  # the share answered `unknown`
    ax.set_xlim(0, 1.01)
    ax.set_ylim(min(0.0, min(accuracy)), 1.02)
    ax.set_xlabel("coverage (share of images answered, surest first)")
    ax.set_ylabel("accuracy of the answered images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"{title + ': ' if title else ''}risk-coverage", fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# filters and feature maps (cnnlab filter, cnnlab inspect)
# --------------------------------------------------------------------------------------------

def filter_panels(image: np.ndarray, output: np.ndarray, path: str | os.PathLike, title: str,
                  max_channels: int = 8) -> Path:
    """Input (H, W, 3) in 0..1 beside a filter's output (C, H', W'): RGB when C = 3, else one grey panel per channel."""
    if output.shape[0] == 3:
        # min-max over all three channels together, so their relative strength stays visible
        low, high = float(output.min()), float(output.max())
        panels = [((output - low) / (high - low or 1.0)).transpose(1, 2, 0)]
        names = [f"output {'x'.join(map(str, output.shape))}"]
    else:
        # one map per channel; imshow stretches each from its min (black) to its max (white)
        panels = list(output[:max_channels])
        names = [f"output channel {c}: {output.shape[1]}x{output.shape[2]}" for c in range(len(panels))]
    panels = [np.clip(image, 0, 1), *panels]
    names = [f"input {image.shape[0]}x{image.shape[1]}", *names]
    # Panels of equal height, each as wide as its aspect ratio asks; at most 16 inches in all.
    aspects = [panel.shape[1] / panel.shape[0] for panel in panels]
    height = min(4.0, 16.0 / sum(aspects))
    fig, axes = plt.subplots(1, len(panels), figsize=(height * sum(aspects) + 0.3 * len(panels), height + 0.8),
                             gridspec_kw={"width_ratios": aspects}, squeeze=False)
    for ax, panel, name in zip(axes[0], panels, names):
        ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def feature_maps(maps: np.ndarray, channels: list[int], path: str | os.PathLike, title: str) -> Path:
    """A grid of feature maps (N, h, w), titled with their channel numbers; each stretched to its own range."""
    return image_grid(list(maps), [f"ch {c}" for c in channels], path, columns=min(len(maps), 8),
                      suptitle=title, cmap="viridis", cell=1.4)


# --------------------------------------------------------------------------------------------
# Augmentation preview
# --------------------------------------------------------------------------------------------

def augment_grid(panels: np.ndarray, row_titles: list[str], column_titles: list[str], path: str | os.PathLike,
                 suptitle: str = "", cell: float = 1.5, pad: int = 4) -> Path:
    """Panels (rows, columns, H, W, 3) in 0..1 as one mosaic: a title per row (left) and per column (top).

    One imshow of the whole mosaic instead of one axes per panel: a 4 x 9 grid renders in a fraction of
    the time, which matters because fit() writes this figure into every run folder."""
    rows, columns, height, width, _ = panels.shape
    mosaic = np.ones((rows * (height + pad) + pad, columns * (width + pad) + pad, 3))  # white gaps
    for r in range(rows):
        for c in range(columns):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            mosaic[top:top + height, left:left + width] = panels[r, c]
    fig, ax = plt.subplots(figsize=(cell * columns, cell * rows * height / width + (0.5 if suptitle else 0.2)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([pad + c * (width + pad) + width / 2 for c in range(columns)], column_titles, fontsize=8)
    ax.set_yticks([pad + r * (height + pad) + height / 2 for r in range(rows)], row_titles, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# image sizes of a data set (the run report's Dataset section)
# --------------------------------------------------------------------------------------------

def image_sizes(summary: dict, path: str | os.PathLike, img_size: int | None = None) -> Path:
    """Bars: files per megapixel range (cnnlab.data.check.size_summary), and what the network sees."""
    histogram = summary["megapixel_histogram"]
    edges, counts = histogram["edges"], histogram["counts"]
    labels = [f"{lo:g}-{hi:g}" if hi is not None else f">{lo:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    fig, ax = plt.subplots(figsize=(7.0, 3.2), layout="constrained")
    bars = ax.bar(labels, counts, color="#4c78a8")
    ax.bar_label(bars, labels=[str(c) if c else "" for c in counts], fontsize=8)
    ax.set_xlabel("megapixels per image")
    ax.set_ylabel("files")
    title = f"{summary['files']} files, median {summary['megapixels']['p50']:.2g} MP"
    if img_size:
        title += f"; the network sees {img_size}x{img_size} = {img_size * img_size / 1e6:.2g} MP"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# where the network looks: tiled-prediction heatmaps and Grad-CAM
# --------------------------------------------------------------------------------------------

def heatmap_overlay(image: np.ndarray, heat: np.ndarray, path: str | os.PathLike, title: str = "",
                    vmax: float | None = 1.0, label: str = "probability") -> Path:
    """An image (H, W, 3) uint8 with a map (h, w) stretched over it, semi-transparent, and its colour bar;
    `vmax` None: the map's own maximum (Grad-CAM's single normalisation per image)."""
    height, width = image.shape[:2]
    fig, ax = plt.subplots(figsize=(7.0, 7.0 * height / width + 0.6), layout="constrained")
    ax.imshow(image)
    shown = ax.imshow(heat, cmap="inferno", alpha=0.5, vmin=0, vmax=vmax if vmax is not None else max(heat.max(), 1e-12),
                      extent=(0, width, height, 0), interpolation="bilinear")
    ax.axis("off")
    fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02, label=label)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def blend_map(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An image (H, W, 3) uint8 with a map (H, W) in 0..1 blended over it in the colour map the overlays use;
    (H, W, 3) uint8, for galleries."""
    colours = plt.get_cmap("inferno")(np.clip(heat, 0, 1))[..., :3]                      # (H, W, 3) in 0..1
    return (np.clip((1 - alpha) * image / 255.0 + alpha * colours, 0, 1) * 255).astype(np.uint8)


# --- the resolution sweep: accuracy against image size and against training time --------------------------------------
def sweep_accuracy(resolutions: list[float], accuracies: list[float], intervals: list[tuple[float, float]],
                   best: int, recommended: int, path: str | os.PathLike, xlabel: str = "image size (px)",
                   title: str = "", chance: float | None = None) -> Path:
    """Best validation accuracy of each run against its resolution, with the 95% interval as an error bar; the
    best run's interval shaded across the plot, so the runs inside it read at a glance, and the recommended run
    ringed."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    low, high = intervals[best]
    ax.axhspan(low, high, color="tab:green", alpha=0.12, label=f"interval of the best ({resolutions[best]:g})")
    errors = np.array([[acc - lo for acc, (lo, _) in zip(accuracies, intervals)],
                       [hi - acc for acc, (_, hi) in zip(accuracies, intervals)]]).clip(min=0)
    ax.errorbar(resolutions, accuracies, yerr=errors, fmt="o-", capsize=4, ms=5, color="tab:blue",
                label="best val accuracy, 95% interval")
    ax.plot([resolutions[recommended]], [accuracies[recommended]], "o", ms=14, mfc="none", mec="tab:red", mew=2,
            label=f"recommended ({resolutions[recommended]:g})")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(resolutions, [f"{r:g}" for r in resolutions])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "accuracy against image size", fontsize=10)
    return _save(fig, path)


def sweep_curves(curves: dict[str, list[tuple[float, float]]], path: str | os.PathLike, title: str = "",
                 chance: float | None = None) -> Path:
    """Validation accuracy after each epoch against the training time so far, one line per resolution: which
    size gets where, how fast."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    for label, points in curves.items():
        ax.plot([t for t, _ in points], [acc for _, acc in points], "o-", ms=3, label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2f})")
    ax.set_xlabel("training time (s, training and validation)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "accuracy against training time", fontsize=10)
    return _save(fig, path)
