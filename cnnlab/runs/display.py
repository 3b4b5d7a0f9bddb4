"""What a person is shown of an image: one display side, one way to shrink an image for it, and the per-window
heatmap of a sliding window, as `predict --heatmap`, serve, explain and the report's galleries draw them."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from cnnlab.data.tiles import heatmap as tiles_heatmap
from cnnlab.data.transforms import Preprocessing
from cnnlab.training.forward import Windows

DISPLAY_SIDE = 1024  # overlays and heatmaps are drawn over the image shrunk to at most this long side
GALLERY_SIDE = 256  # a gallery's thumbnails (top losses): many on one figure


def display_size(height: int, width: int, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(h, w) of an image of (height, width) shrunk so its long side is at most `side` (never enlarged)."""
    factor = min(1.0, side / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def shrink(image: torch.Tensor, side: int = DISPLAY_SIDE) -> torch.Tensor:
    """(C, H, W) uint8 pixels or a float map -> the same, long side at most `side`, antialiased (bilinear, the
    kernel torchvision's resize uses); returned as it is when it is small enough already."""
    size = display_size(image.shape[-2], image.shape[-1], side)
    if size == tuple(image.shape[-2:]):
        return image
    shrunk = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return shrunk.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else shrunk


def window_heatmap(image: torch.Tensor, windows: Windows, preprocessing: Preprocessing,
                   class_index: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """The picture (h, w, 3) uint8 of a whole image (3, H, W) at its scale, shrunk for display; a map of the same
    (h, w) in 0..1, each cell the mean over the windows covering it (nearest: a cell is one position's value, not a
    smooth field): the probability of one class per window, or for a bag run each tile's attention relative to
    the strongest (Windows.attention: the same for every class); and the class shown (the image's predicted class
    unless `class_index`)."""
    height, width = image.shape[1:]
    stride = max(1, round(preprocessing.tile * (1 - preprocessing.overlap)))
    values = windows.attention()[:, None] if preprocessing.bags else torch.softmax(windows.logits, 1)  # (n, 1 or K)
    grid = tiles_heatmap(values, windows.positions, preprocessing.tile, height, width, stride)
    shown = int(windows.image_logits(preprocessing).argmax()) if class_index is None else class_index
    size = display_size(height, width)
    heat = F.interpolate(grid[0 if preprocessing.bags else shown][None, None], size=size, mode="nearest")[0, 0]
    return shrink(image).permute(1, 2, 0).numpy(), heat.numpy(), shown
