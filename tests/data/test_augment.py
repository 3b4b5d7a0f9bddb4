"""Batch augmentation on the device: each op equals torchvision's per-image op on the same parameters,
every image gets its own parameters, and an image's augmentation depends only on its seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cnnlab.data import augment
from cnnlab.data.augment import BatchAugment, for_preset, mix_batch
from cnnlab.data.synth import render


def _photos(n: int, size: int = 48) -> torch.Tensor:
    """(n, 3, size, size) float in 0..1: the built-in shapes, colourful and textured."""
    names = ["star", "circle", "heart", "cross", "arrow", "square"]
    images = [torch.from_numpy(render(names[k % len(names)], size, np.random.default_rng(k))[0]).permute(2, 0, 1)
              for k in range(n)]
    return torch.stack(images).float() / 255


FACTORS = torch.tensor([0.8, 1.0, 1.17, 0.93], dtype=torch.float32)


@pytest.mark.parametrize("ours, theirs", [
    (augment.adjust_brightness, TF.adjust_brightness),
    (augment.adjust_contrast, TF.adjust_contrast),
    (augment.adjust_saturation, TF.adjust_saturation),
])
def test_colour_ops_equal_torchvision_per_image(ours, theirs):
    images = _photos(4)
    out = ours(images.clone(), FACTORS)
    for k in range(4):
        torch.testing.assert_close(out[k], theirs(images[k], float(FACTORS[k])), atol=1e-6, rtol=0)


def test_hsv_hue_equals_torchvision_per_image():
    images = _photos(4)
    shifts = torch.tensor([-0.1, 0.0, 0.05, 0.099])
    out = augment.adjust_hue_hsv(images, shifts)
    for k in range(4):
        torch.testing.assert_close(out[k], TF.adjust_hue(images[k], float(shifts[k])), atol=2e-6, rtol=0)
    # and HSV there and back is the identity
    torch.testing.assert_close(augment.hsv_to_rgb(augment.rgb_to_hsv(images)), images, atol=2e-6, rtol=0)


@pytest.mark.parametrize("shift", [-0.1, -0.05, 0.02, 0.1])
def test_hue_is_close_to_torchvisions(shift):
    """The YIQ rotation the augmentation uses: the hue of colourful pixels moves by the shift asked for (within
    25%), lands within 0.04 of the circle of where torchvision's HSV shift puts it, and luma is unchanged."""
    images = _photos(6)
    ours = augment.adjust_hue(images, torch.full((6,), shift))
    reference = torch.stack([TF.adjust_hue(image, shift) for image in images])
    hue = lambda x: augment.rgb_to_hsv(x)[:, 0]  # noqa: E731
    colourful = augment.rgb_to_hsv(images)[:, 1] > 0.2
    circular = lambda d: (d + 0.5) % 1 - 0.5  # noqa: E731
    moved = circular(hue(ours) - hue(images))[colourful].median().item()
    assert abs(moved - shift) <= 0.25 * abs(shift)
    assert circular(hue(ours) - hue(reference))[colourful].abs().median().item() < 0.04
    assert (ours - reference).abs().mean().item() < 0.05
    unclipped = (ours > 0.01).all(1) & (ours < 0.99).all(1)  # where nothing was clamped, luma is kept exactly
    torch.testing.assert_close(augment.grayscale(ours)[:, 0][unclipped], augment.grayscale(images)[:, 0][unclipped],
                               atol=1e-4, rtol=0)  # float32 round-off of a 3x3 product
    assert torch.equal(augment.adjust_hue(images, torch.zeros(6)), images.clamp(0, 1)) or \
        torch.allclose(augment.adjust_hue(images, torch.zeros(6)), images, atol=1e-6)


def test_rotation_equals_torchvisions_bilinear_rotate_per_image():
    images = _photos(3, size=40)
    angles = torch.tensor([-10.0, 3.5, 9.0], dtype=torch.float64)
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    out = augment.affine(images, angles, ones, zeros, zeros)
    for k in range(3):
        expected = TF.rotate(images[k], float(angles[k]), interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[k], expected, atol=1e-5, rtol=0)
    # the flip folded into the same warp: torchvision's horizontal flip, then its rotation
    flip = torch.tensor([True, False, True])
    out = augment.affine(images, angles, ones, zeros, zeros, flip=flip)
    for k in range(3):
        flipped = TF.horizontal_flip(images[k]) if flip[k] else images[k]
        expected = TF.rotate(flipped, float(angles[k]), interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[k], expected, atol=1e-5, rtol=0)


def test_scale_and_translation_move_the_picture_as_asked():
    image = torch.zeros(1, 1, 32, 32)
    image[..., 14:18, 14:18] = 1.0  # a bright square in the middle
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    shifted = augment.affine(image, zero, one, torch.tensor([0.25], dtype=torch.float64), zero)
    rows, cols = torch.nonzero(shifted[0, 0] > 0.5, as_tuple=True)
    assert cols.float().mean().item() == pytest.approx(15.5 + 8, abs=0.6) and rows.float().mean().item() == \
        pytest.approx(15.5, abs=0.6)  # a quarter of the side to the right
    zoomed = augment.affine(image, zero, torch.tensor([2.0], dtype=torch.float64), zero, zero)
    assert (zoomed[0, 0] > 0.5).sum().item() == pytest.approx(4 * 16, abs=8)  # twice the side: 4x the area


def test_every_image_gets_its_own_parameters_and_only_its_seed_matters():
    aug = BatchAugment()
    one = _photos(1)
    batch = one.repeat(6, 1, 1, 1)  # the same picture six times
    seeds = torch.tensor([11, 12, 13, 14, 15, 16])
    out = aug(batch, seeds)
    assert len({tuple(img.flatten()[:200].tolist()) for img in out}) == 6  # six different augmentations
    flips = aug.draw(torch.arange(400))["flip"]
    assert 0.4 < flips.float().mean().item() < 0.6  # p = 0.5, drawn per image
    # an image's result depends on its seed alone: not on its batch, its position or the other images
    alone = aug(one, torch.tensor([14]))
    in_other_batch = aug(torch.cat([_photos(3)[1:], one]), torch.tensor([99, 98, 14]))
    torch.testing.assert_close(alone[0], out[3], atol=1e-6, rtol=0)
    torch.testing.assert_close(alone[0], in_other_batch[2], atol=1e-6, rtol=0)


def test_parameters_follow_the_lecture_preset_ranges():
    params = BatchAugment().draw(torch.arange(2000))
    assert params["angle"].abs().max() <= 10 and params["angle"].abs().max() > 9.5
    for name in ("brightness", "contrast", "saturation"):
        assert 0.8 <= params[name].min() < 0.81 and 1.19 < params[name].max() <= 1.2
    assert params["hue"].abs().max() <= 0.1
    assert torch.all(params["scale"] == 1) and torch.all(params["dx"] == 0)  # the crop in the workers zooms


def test_presets_on_the_device():
    assert for_preset("none", "device") is None and for_preset("default", "workers") is None
    assert for_preset("default", "device") == BatchAugment()


def test_mixup_and_cutmix_blend_images_and_labels_alike():
    images, labels = _photos(8), torch.arange(8) % 4
    seeds = torch.arange(8) * 7
    same, targets = mix_batch(images, labels, seeds, num_classes=4)
    assert same is images and torch.equal(targets, torch.nn.functional.one_hot(labels, 4).float())
    mixed, soft = mix_batch(images, labels, seeds, num_classes=4, mixup=0.4)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    again, soft_again = mix_batch(images, labels, seeds, num_classes=4, mixup=0.4)
    assert torch.equal(mixed, again) and torch.equal(soft, soft_again)  # a pure function of the seeds
    cut, cut_targets = mix_batch(images, labels, seeds, num_classes=4, cutmix=1.0)
    changed = (cut != images).any(1)  # (N, H, W): pixels taken from another image
    kept = 1 - changed[0].float().mean().item()
    assert cut_targets[0, labels[0]] >= kept - 0.05  # the label share is at least the share of pixels kept
