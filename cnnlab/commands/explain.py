"""`cnnlab explain RUN IMAGE...`: Grad-CAM overlays, where the network found the evidence for a class.

Whole-image runs: the image as the network sees it (resized, centre-cropped), with the class-activation
map of the model's last convolutional stage upsampled over it. Tiled runs: every window of the sliding
window gets its map, the maps are stitched into one over the whole scaled image (overlapping windows
averaged) and normalised once for the whole image, not per tile, so a strong tile and a weak one stay
comparable. The class is the image's predicted class unless `class_name` names another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from cnnlab import plots
from cnnlab.data.folders import Sample, expand_inputs
from cnnlab.data.tiles import aggregate, cut_tiles, tile_positions
from cnnlab.errors import CnnlabError, ImageReadError
from cnnlab.models.gradcam import cam_layer, grad_cam, upsample
from cnnlab.runs.inference import TrainedModel, open_trained

DISPLAY_SIDE = 1024  # overlays are drawn over the image shrunk to at most this long side
CAM_BATCH = 16  # tiles per Grad-CAM pass (a backward pass keeps the activations: fewer than for prediction)


@dataclass
class Explanation:
    """One image's Grad-CAM: the picture (3, H, W) uint8 the map covers, the map (H, W) in 0..1, the class."""

    path: str
    picture: torch.Tensor
    cam: torch.Tensor
    class_index: int
    predicted: int
    probabilities: torch.Tensor  # (K,)


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
    else:
        full, probabilities, predicted, target = _stitched_cam(trained, image, class_index)
    peak = full.max()
    return Explanation(path, image, (full / peak if peak > 0 else full).cpu(), target, predicted, probabilities)


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
    """Tiled runs: the tiles' logits (the image's prediction), then every tile's map for the target class,
    placed where the tile was cut and averaged where tiles overlap; one map over the whole image."""
    pre = trained.preprocessing
    height, width = image.shape[1:]
    positions = tile_positions(height, width, pre.tile, pre.overlap)
    tile_logits = []
    with torch.no_grad():
        for start in range(0, len(positions), 64):
            tiles = trained.pipeline(cut_tiles(image, positions[start:start + 64], pre.tile))
            tile_logits.append(trained.model(tiles).float().cpu())
    image_logits = aggregate(torch.cat(tile_logits), pre.aggregate)
    probabilities = torch.softmax(image_logits, 0)
    predicted = int(probabilities.argmax())
    target = predicted if class_index is None else class_index
    total = torch.zeros(height, width)
    count = torch.zeros(height, width)
    for start in range(0, len(positions), CAM_BATCH):
        chunk = positions[start:start + CAM_BATCH]
        cams, _ = grad_cam(trained.model, trained.pipeline(cut_tiles(image, chunk, pre.tile)), target)
        cams = upsample(cams, (pre.tile, pre.tile)).cpu()                               # (n, tile, tile)
        for (top, left), cam in zip(chunk, cams):
            total[top:top + pre.tile, left:left + pre.tile] += cam
            count[top:top + pre.tile, left:left + pre.tile] += 1
    return total / count.clamp(min=1), probabilities, predicted, target


def overlay_image(explanation: Explanation) -> "np.ndarray":  # noqa: F821
    """The picture (shrunk to DISPLAY_SIDE) with the map blended over it, (h, w, 3) uint8."""
    picture, cam = explanation.picture, explanation.cam
    height, width = picture.shape[1:]
    factor = min(1.0, DISPLAY_SIDE / max(height, width))
    size = [max(1, round(height * factor)), max(1, round(width * factor))]
    small = F.resize(picture, size, antialias=True).permute(1, 2, 0).numpy()
    cam_small = F.resize(cam[None], size, antialias=True)[0].numpy()
    return plots.blend_map(small, cam_small)


@dataclass
class ExplainResult:
    """What `explain` wrote: one overlay per image (and the images it could not read, with the reason)."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # path, class, predicted, probability, file | error

    def describe(self) -> str:
        """One line per image."""
        lines = []
        for row in self.rows:
            if "error" in row:
                lines.append(f"{row['path']}: error: {row['error']}")
            else:
                lines.append(f"{row['path']}: Grad-CAM of '{row['class']}' (predicted '{row['predicted']}', "
                             f"{row['probability']:.3f}) -> {row['file']}")
        return "\n".join(lines)


def explain(run_dir: str | os.PathLike, images: list[str | os.PathLike], class_name: str | None = None,
            out: str | os.PathLike | None = None, which: str = "best", device: str = "auto") -> ExplainResult:
    """Write OUT/<image>.gradcam.png for each image (OUT default: RUN/gradcam); see the module docstring."""
    trained = open_trained(run_dir, which, device)
    cam_layer(trained.model)
    class_index = class_index_of(trained, class_name)
    out_dir = Path(out) if out is not None else Path(run_dir) / "gradcam"
    result = ExplainResult(out_dir)
    classes = trained.record.classes
    expanded = expand_inputs(images)  # files, and the images inside folders, as predict takes them
    paths = [path for path, reason in expanded if reason is None]
    dataset = trained.dataset([Sample(p, 0) for p in paths], warn=False)  # each failure is a row
    files = output_names(paths, ".gradcam.png")
    rows = {path: {"path": path, "error": reason} for path, reason in expanded if reason is not None}
    for index, path in enumerate(paths):
        try:
            picture = dataset.load(index)  # raises ImageReadError with the reason, once
        except ImageReadError as error:
            rows[path] = {"path": path, "error": error.reason}
            continue
        picture = dataset.transform(picture)
        explanation = explain_image(trained, picture, path, class_index)
        name = classes[explanation.class_index]
        file = out_dir / files[index]
        plots.heatmap_overlay(picture.permute(1, 2, 0).numpy() if max(picture.shape[1:]) <= DISPLAY_SIDE
                              else _shrunk(picture), explanation.cam.numpy(), file, vmax=None, label="Grad-CAM",
                              title=f"{Path(path).name}: where the network sees '{name}' (predicted "
                                    f"'{classes[explanation.predicted]}', {float(explanation.probabilities.max()):.2f})")
        result.files.append(file)
        rows[path] = {"path": path, "class": name, "predicted": classes[explanation.predicted],
                      "probability": float(explanation.probabilities[explanation.predicted]), "file": str(file)}
    result.rows = [rows[path] for path, _ in expanded]  # the order the user gave
    return result


def output_names(paths: list[str], suffix: str) -> list[str]:
    """One file name per input, <stem><suffix>; inputs sharing a stem (a/x.jpg, b/x.png) get their parent folder's
    name too, so no picture overwrites another."""
    stems = [Path(path).stem for path in paths]
    names = []
    for path, stem in zip(paths, stems):
        if stems.count(stem) > 1:
            stem = f"{Path(path).parent.name}_{stem}" if Path(path).parent.name else stem
        names.append(stem)
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # still equal (the same name in two folders of the same name): number them
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}_{seen[name]}")
    return [name + suffix for name in unique]


def _shrunk(picture: torch.Tensor):
    height, width = picture.shape[1:]
    factor = DISPLAY_SIDE / max(height, width)
    return F.resize(picture, [round(height * factor), round(width * factor)], antialias=True).permute(1, 2, 0).numpy()
