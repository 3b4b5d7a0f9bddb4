"""Batch augmentation on the training device, with different random parameters for every image.

torchvision's transforms draw one set of parameters per call, so on a batch every image would get the
same flip and the same jitter. Here each image's parameters come from its own seed (the per-sample seed
EpochSampler draws from (seed, epoch, position)), so a batch (N, 3, S, S) is augmented as a handful of
whole-batch tensor ops while each image gets the augmentation it would get alone, whatever batch, worker
or process it lands in: resume and multi-process runs stay exact.

The lecture preset, split between the workers and the device (augment_on="device"):
    workers  RandomResizedCrop(S, scale=(0.8, 1))              per image, cheap (cnnlab.data.transforms)
    device   horizontal flip (p 0.5)                            this module
             rotation (+-10 degrees) [+ scale + translation]    one affine warp: a sampling grid + grid_sample
             brightness, contrast, saturation 0.2, hue 0.1      per-image colour transforms
Approximations, each tested against torchvision's own per-image op on the same parameters
(tests/data/test_augment.py):
  * rotation interpolates bilinearly (RandomRotation's default is nearest); same geometry and black fill;
    the flip is folded into the same warp (a mirrored sampling grid), so it costs nothing;
  * hue turns the colour plane of YIQ (luma kept, chroma rotated by 360 x hue degrees, one 3x3 matrix per
    image) instead of going through HSV as torchvision does: 10x cheaper on a CPU, the same direction and
    size of hue change (measured against torchvision: test_hue_is_close_to_torchvisions);
  * ColorJitter applies its four ops in a random order per image; here the order is fixed (brightness,
    contrast, saturation, hue), the order torchvision uses one time in 24;
  * the lecture rotates before cropping, here the crop comes first: a few more black corners, the same
    range of views.

MixUp and CutMix (off by default) blend pairs of images and their labels; `mix_batch` draws their
parameters per batch from the batch's seeds, so they are as reproducible as the rest.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from cnnlab.config import AUGMENT_PRESETS, check_choice

GREY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_STREAM = 0x5EED_A06  # keeps these draws independent of the worker-side crop, which seeds torch with the same seed


@dataclass(frozen=True)
class BatchAugment:
    """The device part of an augmentation preset; __call__ augments a batch (N, 3, S, S) float in 0..1."""

    flip: float = 0.5
    """Probability of a horizontal flip."""
    degrees: float = 10.0
    """Rotation drawn uniformly from [-degrees, degrees]."""
    scale: tuple[float, float] = (1.0, 1.0)
    """Zoom drawn uniformly from this range (1: none; the workers' crop already zooms in the lecture preset)."""
    translate: float = 0.0
    """Shift drawn uniformly from [-translate, translate] of the side, in x and y."""
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1

    def draw(self, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's parameters from its seed: flip (N,) bool, angle/scale/dx/dy (N,) and the four colour
        factors (N,), as torchvision's ColorJitter and RandomRotation would draw them."""
        rows = []
        for seed in seeds.tolist():
            rng = random.Random(seed ^ _STREAM)
            rows.append([rng.random() < self.flip, rng.uniform(-self.degrees, self.degrees),
                         rng.uniform(*self.scale), rng.uniform(-self.translate, self.translate),
                         rng.uniform(-self.translate, self.translate),
                         rng.uniform(1 - self.brightness, 1 + self.brightness),
                         rng.uniform(1 - self.contrast, 1 + self.contrast),
                         rng.uniform(1 - self.saturation, 1 + self.saturation), rng.uniform(-self.hue, self.hue)])
        table = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 9)
        names = ("flip", "angle", "scale", "dx", "dy", "brightness", "contrast", "saturation", "hue")
        params = {name: table[:, i] for i, name in enumerate(names)}
        params["flip"] = params["flip"] > 0.5
        return params

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float in 0..1 on any device -> the same shape, each image augmented by its seed."""
        p = {k: v.to(images.device) for k, v in self.draw(seeds).items()}
        if self.degrees or self.translate or self.scale != (1.0, 1.0):
            images = affine(images, p["angle"], p["scale"], p["dx"], p["dy"], flip=p["flip"])
        else:
            images = torch.where(p["flip"].view(-1, 1, 1, 1), images.flip(-1), images)
        dtype = images.dtype
        images = adjust_brightness(images, p["brightness"].to(dtype))
        images = adjust_contrast(images, p["contrast"].to(dtype))
        images = adjust_saturation(images, p["saturation"].to(dtype))
        if self.hue:
            images = adjust_hue(images, p["hue"].to(dtype))
        return images


def for_preset(preset: str, augment_on: str) -> BatchAugment | None:
    """The batch part of a preset when it runs on the device, else None (the workers do it all, or nothing)."""
    check_choice("augment", preset, AUGMENT_PRESETS)
    if preset == "none" or augment_on != "device":
        return None
    return BatchAugment()


# --------------------------------------------------------------------------------------------
# the ops: each takes a batch (N, 3, H, W) in 0..1 and per-image factors (N,)
# --------------------------------------------------------------------------------------------

def affine(images: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, dx: torch.Tensor,
           dy: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror where `flip` (N,) is true, then rotate by `angle` degrees (counter-clockwise, about the centre),
    zoom by `scale` and shift by (dx, dy) of the side, in one bilinear warp; what leaves the frame is black
    (torchvision's fill 0)."""
    n, _, height, width = images.shape
    radians = angle.to(torch.float64) * (math.pi / 180)
    cos, sin = torch.cos(radians) / scale, torch.sin(radians) / scale
    # affine_grid maps each output pixel (normalised to -1..1) to where it samples in the input: the inverse
    # of the wanted transform. For a rotation by +a that is a rotation by -a; the aspect terms keep it a
    # rotation on non-square images.
    theta = torch.zeros(n, 2, 3, dtype=torch.float64, device=images.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * height / width
    theta[:, 1, 0], theta[:, 1, 1] = sin * width / height, cos
    theta[:, 0, 2], theta[:, 1, 2] = -2 * dx, -2 * dy
    if flip is not None:  # mirror, then warp: the input is read at the mirrored x of where the warp reads
        theta[:, 0, :] *= torch.where(flip.to(images.device), -1.0, 1.0).to(torch.float64).view(-1, 1)
    grid = sampling_grid(theta.to(images.dtype), height, width)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """F.affine_grid(theta (N, 2, 3), (N, C, H, W), align_corners=False) -> (N, H, W, 2), as two broadcast
    multiply-adds over the pixel centres: affine_grid's batched matrix product with an inner size of 3 costs
    ~30x more on a CPU."""
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1   # (W,) pixel centres
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1  # (H,)
    a = theta.view(-1, 2, 3, 1, 1)
    grid = torch.empty(theta.shape[0], height, width, 2, device=theta.device, dtype=theta.dtype)
    for i in range(2):  # output x, then y: a[:, i, 0] * x + a[:, i, 1] * y + a[:, i, 2]
        grid[..., i] = a[:, i, 0] * xs.view(1, 1, -1) + (a[:, i, 1] * ys.view(1, -1, 1) + a[:, i, 2])
    return grid


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clamped to 0..1 (torchvision's _blend), factor (N,) per image;
    `other` broadcasts against images (N, 3, H, W)."""
    factor = factor.view(-1, 1, 1, 1)
    return (images * factor).add_(other * (1 - factor)).clamp_(0, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma, accumulated in place (a third of the passes of r*a + g*b + c*b)."""
    r, g, b = images.unbind(1)
    return (r * GREY[0]).add_(g, alpha=GREY[1]).add_(b, alpha=GREY[2]).unsqueeze(1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply by factor (N,): torchvision's adjust_brightness per image."""
    return (images * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level: torchvision's adjust_contrast per image. The mean of the
    luma is the luma of the channel means, so no grey image is made."""
    means = images.mean(dim=(2, 3))                                                  # (N, 3)
    grey = (means * torch.tensor(GREY, device=images.device, dtype=images.dtype)).sum(1)  # (N,)
    return _blend(images, grey.view(-1, 1, 1, 1), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image: torchvision's adjust_saturation per image."""
    return _blend(images, grayscale(images), factor)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in 0..1 -> HSV in 0..1 (Pillow's formulas, as torchvision)."""
    r, g, b = images.unbind(1)
    maxc, minc = images.amax(1), images.amin(1)
    flat = maxc == minc  # grey pixels: no hue, no saturation (and no division by zero)
    spread = maxc - minc
    s = spread / torch.where(flat, torch.ones_like(maxc), maxc)
    divisor = torch.where(flat, torch.ones_like(spread), spread)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) HSV in 0..1 -> RGB in 0..1."""
    h, s, v = images.unbind(1)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64).remainder(6)
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    # sector i of the hue circle -> which of (v, p, q, t) is r, g and b
    table = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=images.device)
    choices = torch.stack((v, p, q, t), 1)                     # (N, 4, H, W)
    index = table[:, i].permute(1, 0, 2, 3)                     # (N, 3, H, W)
    return choices.gather(1, index)


def adjust_hue_hsv(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn the hue by shift (N,) in [-0.5, 0.5] of the colour circle through HSV: exactly torchvision's
    adjust_hue per image (the reference adjust_hue approximates)."""
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, 0] + shift.view(-1, 1, 1)).remainder(1.0)
    return hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), 1))


# RGB -> YIQ (NTSC): Y is luma, I and Q the colour plane a hue change turns
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn the hue by shift (N,) of the colour circle (360 x shift degrees) as a rotation of the YIQ colour
    plane: one 3x3 matrix per image, luma unchanged; close to torchvision's HSV adjust_hue (see the module)."""
    radians = -shift.to(torch.float64) * (2 * math.pi)  # HSV hue runs the other way round the IQ plane
    cos, sin = torch.cos(radians), torch.sin(radians)
    rotation = torch.zeros(len(shift), 3, 3, dtype=torch.float64)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    matrix = (torch.linalg.inv(_YIQ) @ rotation @ _YIQ).to(images.device, images.dtype)  # (N, 3, 3)
    n, _, height, width = images.shape
    return torch.bmm(matrix, images.reshape(n, 3, height * width)).view(n, 3, height, width).clamp_(0, 1)


# --------------------------------------------------------------------------------------------
# MixUp / CutMix: pairs of images and their labels blended (off by default)
# --------------------------------------------------------------------------------------------

def mix_batch(images: torch.Tensor, labels: torch.Tensor, seeds: torch.Tensor, num_classes: int,
              mixup: float = 0.0, cutmix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) on a batch, one of them per batch when both are
    on (as timm): each image is blended with its neighbour in a shuffled order, and its target becomes the
    mix of the two one-hot labels. Returns (images, targets (N, K) float). Alphas 0: nothing changes."""
    targets = F.one_hot(labels, num_classes).to(images.dtype)
    if not (mixup or cutmix) or len(labels) < 2:
        return images, targets
    rng = random.Random(int(seeds.sum().item()) ^ _STREAM)  # one draw per batch, a pure function of its seeds
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    lam = rng.betavariate(cutmix, cutmix) if use_cutmix else rng.betavariate(mixup, mixup)
    order = torch.tensor(rng.sample(range(len(labels)), len(labels)), device=images.device)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = rng.randrange(height), rng.randrange(width)
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[:, :, top:bottom, left:right] = images[order, :, top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)  # the share really kept
    else:
        images = lam * images + (1 - lam) * images[order]
    return images, lam * targets + (1 - lam) * targets[order]
