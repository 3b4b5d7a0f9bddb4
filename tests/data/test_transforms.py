"""The default preset on uint8 tensors (v2) against the lecture's PIL pipeline (v1), statistically."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.transforms import v2

from cnnlab.data.synth import render
from cnnlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, decode_size, normalize, train_transform

IMG_SIZE = 32
DRAWS = 300
# Hundreds of tiny per-image ops: one_torch_thread (conftest), as in a DataLoader worker; with two
# OpenMP threads on a busy 2-core machine every op waits at a barrier and the test runs 30x slower.


def _lecture_pipeline(img_size: int) -> T.Compose:
    """The lecture's augmentation: torchvision.transforms v1 on PIL images, same parameters."""
    return T.Compose([
        T.Resize(decode_size(img_size)),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomRotation(10),
        T.RandomResizedCrop(img_size, scale=(0.8, 1.0)),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _channel_stats(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, 3, H, W) -> per channel: mean and spread of per-image means, mean of per-image stds."""
    means, stds = batch.mean((2, 3)), batch.std((2, 3))  # (N, 3) each
    return {"mean": means.mean(0), "spread": means.std(0), "std": stds.mean(0)}


def test_tensor_preset_matches_the_pil_pipeline_statistically(one_torch_thread):
    pixels, _ = render("star", 80, np.random.default_rng(0))  # (80, 80, 3) uint8
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, 80, 80)
    tensor_path, pil_path = train_transform("default", IMG_SIZE), _lecture_pipeline(IMG_SIZE)
    torch.manual_seed(0)
    ours = normalize(torch.stack([tensor_path(tensor) for _ in range(DRAWS)]))  # uint8 -> (DRAWS, 3, 32, 32) float32
    lecture = torch.stack([pil_path(Image.fromarray(pixels)) for _ in range(DRAWS)])
    assert ours.shape == lecture.shape == (DRAWS, 3, IMG_SIZE, IMG_SIZE) and ours.dtype == torch.float32
    a, b = _channel_stats(ours), _channel_stats(lecture)
    # the mean over 300 draws has a standard error of ~0.02 here (spread ~0.2-0.4 / sqrt(300))
    assert (a["mean"] - b["mean"]).abs().max() < 0.08, (a, b)
    assert (a["std"] - b["std"]).abs().max() < 0.05, (a, b)
    # the jitter has the same strength: spread of image means within 25 %
    assert ((a["spread"] / b["spread"]) - 1).abs().max() < 0.25, (a, b)
    assert a["spread"].min() > 0.05  # and it is there at all


def test_preset_is_random_per_sample_and_stays_uint8(one_torch_thread):
    """Workers hand over uint8 pixels (a quarter of float32's bytes); normalisation is on the device."""
    transform = train_transform("default", IMG_SIZE)
    assert isinstance(transform.transforms[-1], v2.ColorJitter)
    pixels, _ = render("circle", 64, np.random.default_rng(1))
    image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    torch.manual_seed(5)
    first, second = transform(image), transform(image)
    assert first.dtype == torch.uint8 and first.shape == (3, IMG_SIZE, IMG_SIZE)
    assert not torch.equal(first, second)  # new parameters for every image
    torch.manual_seed(5)
    assert torch.equal(transform(image), first)  # and a pure function of the RNG state
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
