"""Grad-CAM of a trained run: where in an image the network found the evidence for a class (`cnnlab explain`,
serve's overlays and the report's top-loss gallery use it).

Whole-image runs: the image as the network sees it (resized, centre-cropped), with the class-activation
map of the model's last convolutional stage upsampled over it. Tiled runs: every window of the sliding
window gets its map, the maps are stitched into one over the whole scaled image (overlapping windows
averaged) and normalised once for the whole image, not per tile, so a strong tile and a weak one stay
comparable. The class is the image's predicted class unless `class_name` names another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cnnlab import plots
from cnnlab.data.tiles import cut_tiles
from cnnlab.errors import CnnlabError
from cnnlab.models.gradcam import cam_layer, grad_cam, upsample
from cnnlab.runs.display import shrink
from cnnlab.runs.inference import TrainedModel
from cnnlab.training.forward import window_batch, window_logits


@dataclass
class Evidence:
    """One tile a bag run's prediction rests on: where it was cut, its attention weight, its pixels and its map."""

    top: int
    left: int
    weight: float
    """Its share of the bag's attention (the kept tiles' weights sum to 1)."""
    tile: torch.Tensor  # (3, T, T) uint8
    cam: torch.Tensor  # (T, T) in 0..1, this tile's own Grad-CAM for the explained class


@dataclass
class Explanation:
    """One image's Grad-CAM: the picture (3, H, W) uint8 the map covers, the map (H, W) in 0..1, the class."""

    path: str
    picture: torch.Tensor
    cam: torch.Tensor
    class_index: int
    predicted: int
    probabilities: torch.Tensor  # (K,)
    evidence: list[Evidence] = field(default_factory=list)
    """Bag runs: the EVIDENCE_TILES tiles of highest attention, highest first (empty for other runs)."""


# Tiles shown as a bag run's evidence: the attention of a trained bag concentrates on a few tiles (M = 16 are kept
# and pooled); 8 show where it rests without a gallery of near-zero weights.
EVIDENCE_TILES = 8


def class_index_of(trained: TrainedModel, class_name: str | None) -> int | None:
    """The index of `class_name` among the run's classes (None: the predicted class); a clear error otherwise."""
    if class_name is None:
        return None
    classes = trained.record.classes
    if class_name not in classes:
        raise CnnlabError(f"--class {class_name!r} is not one of the run's classes: {', '.join(classes)}")
    return classes.index(class_name)


def explain_image(trained: TrainedModel, image: torch.Tensor, path: str = "",
                  class_index: int | None = None) -> Explanation:
    """Grad-CAM of one decoded image: for whole-image runs `image` is what the evaluation transform gives
    (3, S, S); for tiled runs the whole image at the run's scale (3, H, W)."""
    cam_layer(trained.model)  # an MLP has no map: refuse before any work
    pre = trained.preprocessing
    if not pre.tile:
        x = trained.pipeline(image[None])                                               # (1, 3, S, S)
        cam, logits = grad_cam(trained.model, x, class_index)  # class_index None: the predicted class
        probabilities = torch.softmax(logits[0].float(), 0).cpu()
        predicted = int(probabilities.argmax())
        target = predicted if class_index is None else class_index
        full = upsample(cam, tuple(image.shape[1:]))[0]                                 # (S, S)
        evidence = []
    else:
        full, probabilities, predicted, target, evidence = _stitched_cam(trained, image, class_index)
    peak = full.max()
    return Explanation(path, image, (full / peak if peak > 0 else full).cpu(), target, predicted, probabilities,
                       evidence)


def explain_batch(trained: TrainedModel, images: list[torch.Tensor], targets: list[int]) -> list[Explanation]:
    """Grad-CAM of several same-size crops of a whole-image run in one pass (each normalised on its own)."""
    if not images:
        return []
    x = trained.pipeline(torch.stack(images))                                           # (N, 3, S, S)
    cams, logits = grad_cam(trained.model, x, torch.tensor(targets))
    full = upsample(cams, tuple(images[0].shape[1:])).cpu()
    probabilities = torch.softmax(logits.float(), 1).cpu()
    peaks = full.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return [Explanation("", image, cam, target, int(p.argmax()), p)
            for image, cam, target, p in zip(images, full / peaks, targets, probabilities)]


def _stitched_cam(trained: TrainedModel, image: torch.Tensor, class_index: int | None):
    """Tiled runs: the windows' logits (the image's prediction, by the one sliding window), then every window's map
    for the target class, placed where the window was cut and averaged where windows overlap; one map over the
    whole image. Bag runs: each kept tile's map times its attention weight (the Grad-CAM of the bag's logit through
    its tiles' own: the pooled logit is their attention-weighted sum, and ReLU(a x) = a ReLU(x) for a > 0), so
    only the tiles the prediction used are explained, and a tile counts as much as it weighs."""
    pre = trained.preprocessing
    height, width = image.shape[1:]
    windows = window_logits(trained.model, image, trained.pipeline, pre)
    probabilities = torch.softmax(windows.image_logits(pre), 0)
    predicted = int(probabilities.argmax())
    target = predicted if class_index is None else class_index
    positions, weights = windows.positions, torch.ones(len(windows.positions))
    if pre.bags:
        weights = windows.weights(pre)
        kept = weights.nonzero().flatten().tolist()
        positions, weights = [positions[k] for k in kept], weights[kept]
    total = torch.zeros(height, width)
    count = torch.zeros(height, width)
    evidence = []
    strongest = set(weights.argsort(descending=True)[:EVIDENCE_TILES].tolist()) if pre.bags else set()
    step = window_batch(pre.tile)  # the sliding window's batching rule (a backward pass each)
    for start in range(0, len(positions), step):
        chunk = positions[start:start + step]
        tiles = cut_tiles(image, chunk, pre.tile)                                       # (n, 3, tile, tile)
        cams, _ = grad_cam(trained.model, trained.pipeline(tiles), target)
        cams = upsample(cams, (pre.tile, pre.tile)).cpu()                               # (n, tile, tile)
        for k, ((top, left), cam, weight) in enumerate(zip(chunk, cams, weights[start:start + step].tolist())):
            total[top:top + pre.tile, left:left + pre.tile] += weight * cam
            count[top:top + pre.tile, left:left + pre.tile] += 1
            if start + k in strongest:
                peak = cam.max()
                evidence.append(Evidence(top, left, weight, tiles[k].cpu(), cam / peak if peak > 0 else cam))
    evidence.sort(key=lambda item: -item.weight)
    # bag runs: a sum of weighted maps (the weights already sum to 1); tiled runs: the mean where windows overlap
    return (total if pre.bags else total / count.clamp(min=1)), probabilities, predicted, target, evidence


def evidence_panels(explanation: Explanation) -> tuple[list[np.ndarray], list[str]]:
    """A bag run's evidence tiles, each with its own map blended over it, (T, T, 3) uint8, and their titles."""
    panels, titles = [], []
    for rank, item in enumerate(explanation.evidence, start=1):
        panels.append(plots.blend_map(item.tile.permute(1, 2, 0).numpy(), item.cam.numpy()))
        titles.append(f"#{rank}: weight {item.weight:.2f}\nat x={item.left}, y={item.top}")
    return panels, titles


def overlay_image(explanation: Explanation) -> np.ndarray:
    """The picture shrunk for display with the map blended over it, (h, w, 3) uint8."""
    picture = shrink(explanation.picture)                                               # (3, h, w) uint8
    cam = shrink(explanation.cam[None])[0]                                               # (h, w) in 0..1
    return plots.blend_map(picture.permute(1, 2, 0).numpy(), cam.numpy())
