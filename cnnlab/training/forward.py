"""From a batch of uint8 pixels to the model's input on its device, and a model over a loader without
gradients: logits for validation, evaluation and prediction.

Workers hand over uint8 (N, 3, S, S): a quarter of the bytes of float32 through the worker queues and
the host-to-device copy. Scaling to 0..1, the batch augmentation (training only) and the normalisation
run here, on the device, as whole-batch tensor ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data.augment import mix_batch
from cnnlab.data.dataset import Batch
from cnnlab.data.tiles import aggregate, cut_tiles, tile_positions
from cnnlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, normalize
from cnnlab.models.mil import attention_weights, top_tiles
from cnnlab.training.device import Precision
from cnnlab.training.progress import Progress


@dataclass(frozen=True)
class InputPipeline:
    """What happens to a batch between the loader and the model, on the device."""

    device: torch.device
    precision: Precision
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    # (images float (N, 3, S, S) in 0..1, seeds (N,)) -> same shape: the batch augmentation, or None
    augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor | None = None, train: bool = False) -> torch.Tensor:
        """uint8 (N, 3, S, S) on the host -> normalised float (N, 3, S, S) on the device, in the model's
        memory format; augmented per image (from `seeds`) when `train`."""
        images = images.to(self.device, non_blocking=True)
        owned = images.dtype == torch.uint8  # then the float copy below is ours to overwrite
        images = images.float().div_(255) if owned else images
        if train and self.augment is not None:
            augmented = self.augment(images, seeds)
            owned, images = owned or augmented is not images, augmented
        images = normalize(images, self.mean, self.std, inplace=owned)
        if self.precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


@dataclass(frozen=True)
class ImageInputs:
    """A training batch of crops (or tiles) -> the model's input on the device: augmented per image, at the epoch's
    side (progressive resizing; None: as loaded), MixUp/CutMix-blended when asked. Called as inputs(model, batch,
    epoch, side) -> ((images (N, 3, side, side),), soft targets (N, K) or None); cnnlab.training.bags.BagInputs is
    the same call for bags of tiles. Training, the --time measurement and the LR finder all step through it."""

    pipeline: InputPipeline
    keep_scale: bool
    """Tiles: progressive resizing crops them instead of resizing (smaller_side)."""
    num_classes: int
    mixup: float = 0.0
    cutmix: float = 0.0
    steady_epoch: int = 1
    """An epoch whose steps cost what most of a run's do (what --time measures): any."""

    def __call__(self, model: nn.Module, batch: Batch, epoch: int, side: int | None = None
                 ) -> tuple[tuple[torch.Tensor], torch.Tensor | None]:
        images = self.pipeline(batch.images, batch.seeds, train=True)                  # (N, 3, S, S) on the device
        if side is not None and side != images.shape[-1]:
            images = smaller_side(images, side, self.keep_scale)
        targets = None
        if self.mixup or self.cutmix:
            images, targets = mix_batch(images, batch.labels.to(images.device), batch.seeds, self.num_classes,
                                        self.mixup, self.cutmix)
        return (images,), targets


@dataclass
class Logits:
    """A model's outputs over a loader: logits (N, K) float32 on the CPU, labels (N,), dataset indices (N,)
    of every image that could be read."""

    logits: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def loss_and_accuracy(self) -> tuple[float, float]:
        """Mean cross-entropy and accuracy (NaN when nothing was read)."""
        return loss_and_accuracy(self.logits, self.labels)


@torch.no_grad()
def collect_logits(model: nn.Module, loader: DataLoader, pipeline: InputPipeline, description: str = "eval",
                   show_progress: bool = True, tta: bool = False) -> Logits:
    """Run `model` (eval mode) over every batch of `loader`; with `tta`, average the logits of each image and
    its mirror image (flip test-time augmentation)."""
    model.eval()
    all_logits, all_labels, all_indices = [], [], []
    with Progress(len(loader.dataset), description, enabled=show_progress, show_loss=False) as progress:
        for batch in loader:
            if len(batch) == 0:
                continue
            images = pipeline(batch.images)
            with pipeline.precision.autocast(pipeline.device):
                logits = model(images).float()                           # (N, K)
                if tta:
                    logits = (logits + model(images.flip(-1)).float()) / 2  # mirror along the width
            all_logits.append(logits.cpu())
            all_labels.append(batch.labels)
            all_indices.append(batch.indices)
            progress.update(len(batch))
    if not all_logits:
        empty = torch.empty(0, dtype=torch.long)
        return Logits(torch.empty(0, 0), empty, empty)
    return Logits(torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_indices))


@dataclass
class Windows:
    """One whole image as the network saw it at the run's scale: every window's (top, left), its own logits (n, K)
    float32 on the CPU, and in bag runs its attention score (n,). How the run pools them is the view's
    (Preprocessing: mean, max, or attention over the bag's top `bag_tiles`)."""

    positions: list[tuple[int, int]]
    logits: torch.Tensor
    scores: torch.Tensor | None = None

    def weights(self, view: Preprocessing) -> torch.Tensor:
        """(n,) each window's weight in the image's logits for mean or attention pooling (they sum to 1): a bag's
        softmax over its `bag_tiles` highest scores (what IPS keeps in training), 0 for the other tiles."""
        if not view.bags:
            if view.aggregate != "mean":
                raise ValueError(f"aggregate {view.aggregate!r} pools by no weights")
            return torch.full((len(self.logits),), 1 / len(self.logits))
        kept = top_tiles(self.scores, view.bag_tiles)
        weights = torch.zeros(len(self.scores))
        weights[kept] = attention_weights(self.scores[kept][None])[0]
        return weights

    def image_logits(self, view: Preprocessing) -> torch.Tensor:
        """(K,) the image's logits: its windows' mean or max, or a bag's attention-weighted mean of its kept tiles'
        logits (equal to the classifier on the attention-pooled tile vectors, cnnlab.models.mil)."""
        if view.bags:
            return self.weights(view) @ self.logits
        return aggregate(self.logits, view.aggregate)

    def attention(self) -> torch.Tensor:
        """(n,) a bag's attention relative to its strongest tile, exp(score - max score) in (0, 1]: for the kept
        tiles their pooling weight over the top tile's, for the others the same ratio (the heatmap)."""
        return torch.exp(self.scores - self.scores.max())


# Tiles per forward pass of the sliding window: at most this many pixels (16 tiles of 256 px, 4 of 512 px).
# Inference memory grows with the pixels of a batch (activations) on top of torch's own ~0.5-0.7 GB; this
# keeps a whole tiled prediction under 1 GB whatever the tile size, at no cost in speed on a CPU (a batch of
# 16 tiles already fills its matrix units). Grad-CAM's windows (a backward pass each) use the same rule, and so
# does a bag run's scoring pass (cnnlab.training.bags).
TILE_BATCH_PIXELS = 16 * 256 * 256


def window_batch(tile: int, requested: int | None = None) -> int:
    """Windows per forward pass: the one batching rule of the sliding window (at most TILE_BATCH_PIXELS, and at
    most `requested` when given)."""
    most = max(1, TILE_BATCH_PIXELS // (tile * tile))
    return most if requested is None else max(1, min(requested, most))


def tile_outputs(model: nn.Module, tiles: torch.Tensor, bags: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised tiles (n, 3, T, T) -> (their own logits (n, K), and for a bag model their attention scores (n,))."""
    if bags:
        return model.tile_outputs(tiles)
    return model(tiles), None


@torch.no_grad()
def window_logits(model: nn.Module, image: torch.Tensor, pipeline: InputPipeline, view: Preprocessing,
                  tta: bool = False, batch_size: int | None = None) -> Windows:
    """The sliding window over one whole uint8 image (3, H, W) at its scale: every window's position, logits and
    (bag runs) attention score, float32 on the CPU (flip-averaged with `tta`), in batches of
    window_batch(tile, batch_size). Prediction, evaluation, validation, serve and Grad-CAM all slide through here."""
    model.eval()
    positions = tile_positions(image.shape[1], image.shape[2], view.tile, view.overlap)
    step = window_batch(view.tile, batch_size)
    logits, scores = [], []
    for start in range(0, len(positions), step):
        tiles = pipeline(cut_tiles(image, positions[start:start + step], view.tile))  # (n, 3, tile, tile)
        with pipeline.precision.autocast(pipeline.device):
            tile_logits, tile_scores = tile_outputs(model, tiles, view.bags)          # (n, K), (n,) or None
            if tta:
                flipped_logits, flipped_scores = tile_outputs(model, tiles.flip(-1), view.bags)
                tile_logits = (tile_logits.float() + flipped_logits.float()) / 2
                if tile_scores is not None:
                    tile_scores = (tile_scores.float() + flipped_scores.float()) / 2
        logits.append(tile_logits.float().cpu())
        if tile_scores is not None:
            scores.append(tile_scores.float().cpu())
    return Windows(positions, torch.cat(logits), torch.cat(scores) if scores else None)


@torch.no_grad()
def collect_tiled_logits(model: nn.Module, loader: DataLoader, pipeline: InputPipeline, view: Preprocessing,
                         batch_size: int | None = None, description: str = "eval", show_progress: bool = True,
                         tta: bool = False, on_image: Callable | None = None) -> Logits:
    """Slide the view's window over every whole image of `loader` (whole images, one or more per batch) and pool
    each image's windows as the view says (Windows.image_logits).

    `on_image(index, windows)`, if given, sees every image's Windows (heatmaps)."""
    all_logits, all_labels, all_indices = [], [], []
    with Progress(len(loader.dataset), description, enabled=show_progress, show_loss=False) as progress:
        for batch in loader:
            for image, label, index in zip(batch.images, batch.labels, batch.indices):
                windows = window_logits(model, image, pipeline, view, tta, batch_size)
                if on_image is not None:
                    on_image(int(index), windows)
                all_logits.append(windows.image_logits(view)[None])
                all_labels.append(label[None])
                all_indices.append(index[None])
            progress.update(len(batch))
    if not all_logits:
        empty = torch.empty(0, dtype=torch.long)
        return Logits(torch.empty(0, 0), empty, empty)
    return Logits(torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_indices))


def view_logits(model: nn.Module, loader: DataLoader, pipeline: InputPipeline, view: Preprocessing,
                description: str = "eval", show_progress: bool = True, tta: bool = False,
                on_image: Callable | None = None) -> Logits:
    """Logits of every readable image of `loader` as the run's view scores it: crops in batches, or whole images by
    the sliding window, pooled as the record says (mean, max, or a bag's attention; `on_image(index, windows)` sees
    each whole image's Windows)."""
    if view.tiled:
        return collect_tiled_logits(model, loader, pipeline, view, description=description,
                                    show_progress=show_progress, tta=tta, on_image=on_image)
    return collect_logits(model, loader, pipeline, description, show_progress=show_progress, tta=tta)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a set of logits."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def smaller_side(images: torch.Tensor, side: int, keep_scale: bool) -> torch.Tensor:
    """Progressive resizing's (N, 3, S, S) -> (N, 3, side, side). Whole images are resized (bilinear, antialiased):
    the same view, fewer pixels. Tiles are centre-cropped instead: a tiled run's pixel scale is what it is for
    (an object 12 px wide in a tile must stay 12 px, or the network learns it at a size prediction never shows)."""
    if keep_scale:
        top = (images.shape[-2] - side) // 2
        left = (images.shape[-1] - side) // 2
        return images[..., top:top + side, left:left + side]
    return nn.functional.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
