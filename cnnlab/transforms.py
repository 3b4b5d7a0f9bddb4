"""Augmentation presets (torchvision.transforms.v2 on uint8 tensors), applied on the fly per read.

`default` is the lecture's pipeline; `none` and evaluation are a deterministic resize + center crop.
Every preset ends with float conversion and ImageNet normalisation, so pretrained torchvision
weights see the statistics they were trained with.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

from cnnlab.config import AUGMENT_PRESETS, check_choice

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Images are first brought to a short side of img_size / 0.875 (the classic 224 <- 256 ratio):
# RandomResizedCrop(scale >= 0.8) then never upsamples, and rotation/jitter run on a small image
# instead of a 12-megapixel one.
DECODE_RATIO = 0.875


def decode_size(img_size: int) -> int:
    """Short side the decoder must deliver for crops of `img_size`."""
    return math.ceil(img_size / DECODE_RATIO)


def _finish() -> list:
    # uint8 (3, H, W) in 0..255 -> float32 in 0..1 -> normalised per channel
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def eval_transform(img_size: int) -> v2.Compose:
    """Deterministic: resize the short side to img_size, center crop img_size x img_size."""
    return v2.Compose([v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size), *_finish()])


def train_transform(preset: str, img_size: int) -> v2.Compose:
    """Training transform for a named preset; random parameters are drawn anew for every image."""
    check_choice("augment", preset, AUGMENT_PRESETS)
    if preset == "none":
        return eval_transform(img_size)
    return v2.Compose([
        v2.Resize(decode_size(img_size), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomRotation(10),
        v2.RandomResizedCrop(img_size, scale=(0.8, 1.0), antialias=True),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        *_finish(),
    ])


def denormalize(batch: torch.Tensor) -> torch.Tensor:
    """Undo Normalize for display: (N, 3, H, W) float -> same shape in 0..1."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1)
