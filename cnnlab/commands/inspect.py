"""Look inside a trained run: its first layer's learned filters, and what each stage makes of one image.

The first convolution's filters are (3, kH, kW) weights: shown as tiny RGB images they are the colour
and edge detectors the network learned. The feature maps are the stage outputs for one image, taken
through the model's `features` seam with forward hooks on the stages the model names itself
(`model.stage_modules()`: simple_cnn's stages, resnet's layer1..layer4, mobilenet's features, ...).

The image goes through the run's recorded evaluation preprocessing (resize + center crop), exactly
what the network sees at prediction time; input.png shows that crop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from torch import nn

from cnnlab import plots
from cnnlab.config import Help
from cnnlab.data.images import DEFAULT_MAX_PIXELS, read_at, save_image
from cnnlab.data.transforms import normalize
from cnnlab.errors import CnnlabError
from cnnlab.training.record import INSPECT
from cnnlab.runs.reader import load_model

FILTER_PIXELS = 8  # each filter tap becomes an 8x8 block, so a 3x3 filter is 24 px wide and visible


@dataclass
class InspectResult:
    """Files written by inspect_run and the shapes it saw."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)  # input.png, first_layer_filters.png, stage_1.png, ...
    stage_names: list[str] = field(default_factory=list)  # module names, e.g. "stages.0", "net.layer1"
    stage_shapes: list[tuple[int, int, int]] = field(default_factory=list)  # (C, h, w) per stage, one image
    filter_shape: tuple[int, ...] = ()  # (C_out, C_in, kH, kW) of the first Conv2d

    def describe(self) -> str:
        """Lines printed by `cnnlab inspect`."""
        lines = [f"first layer filters: {'x'.join(map(str, self.filter_shape))} (C_out x C_in x kH x kW)"]
        lines += [f"stage {i}: {name} -> {'x'.join(map(str, shape))}"
                  for i, (name, shape) in enumerate(zip(self.stage_names, self.stage_shapes), start=1)]
        return "\n".join(lines + [f"wrote {len(self.files)} files to {self.out_dir}"])


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first Conv2d in the model's module order, or a CnnlabError for a model without one."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise CnnlabError(f"{type(model).__name__} has no Conv2d layer: inspect shows convolution filters and "
                      "feature maps, so it needs a convolutional model (not mlp)")


def filter_images(weight: torch.Tensor) -> list[np.ndarray]:
    """(C_out, C_in, kH, kW) weights -> C_out images (kH·8, kW·8, 3) in 0..1, each min-max normalised."""
    images = []
    for kernel in weight.detach().float().cpu().numpy():  # (C_in, kH, kW)
        if kernel.shape[0] != 3:
            kernel = np.repeat(kernel.mean(axis=0, keepdims=True), 3, axis=0)  # not RGB: show the mean in grey
        low, high = kernel.min(), kernel.max()
        kernel = (kernel - low) / (high - low or 1.0)  # each filter to 0..1: the pattern, not its scale
        # nearest-neighbour upscaling: every tap a solid block, so 3x3 stays 3x3 and does not blur
        block = np.kron(kernel.transpose(1, 2, 0), np.ones((FILTER_PIXELS, FILTER_PIXELS, 1)))
        images.append(block)
    return images


def _stage_outputs(model: nn.Module, x: torch.Tensor, stages: list[tuple[str, nn.Module]]) -> list[torch.Tensor]:
    """model.features(x) with forward hooks on the stages; their outputs in order."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(
        lambda _module, _args, output, name=name: outputs.__setitem__(name, output.detach()))
        for name, module in stages]
    try:
        with torch.no_grad():
            final = model.features(x)  # (1, C, h, w)
    finally:
        for handle in handles:
            handle.remove()
    if not stages:  # a model we know no stages of: its final feature maps, as one stage
        return [final.detach()]
    return [outputs[name] for name, _ in stages if name in outputs]


def inspect_run(run_dir: str | os.PathLike, image: str | os.PathLike,
                out: Annotated[str | os.PathLike | None, Help("Folder for input.png, first_layer_filters.png, "
                                                              "stage_<i>.png (default: RUN_DIR/inspect/<image "
                                                              "name>).")] = None,
                max_maps: Annotated[int, Help("Feature maps per stage (the most active channels).")] = 32,
                which: str = "best") -> InspectResult:
    """Show a trained run's first-layer filters and each stage's feature maps for one image.

    Writes first_layer_filters.png, input.png and stage_<i>.png into `out` (default: RUN/inspect/<image name>)."""
    if max_maps < 1:
        raise CnnlabError(f"max_maps={max_maps}: show at least 1 feature map per stage")
    model, record = load_model(run_dir, which)
    conv = first_conv(model)
    out_dir = Path(out) if out is not None else Path(run_dir) / INSPECT / Path(image).stem
    result = InspectResult(out_dir=out_dir, filter_shape=tuple(conv.weight.shape))

    # The prediction-time view, as the run recorded it: decode reduced, resize + center crop, normalise.
    preprocessing = record.preprocessing
    cap = record.config.max_pixels if record.config else DEFAULT_MAX_PIXELS
    pixels = read_at(image, preprocessing.resolution, max_pixels=cap)  # (3, H, W) uint8, as predict reads it
    seen = preprocessing.one_input(pixels)  # (3, S, S) uint8, what the network sees (tiled runs: the central window)
    x = normalize(seen[None], preprocessing.mean, preprocessing.std)  # (1, 3, S, S)
    save_image(seen, out_dir / "input.png")
    result.files.append(out_dir / "input.png")

    filters = filter_images(conv.weight)
    result.files.append(plots.image_grid(
        filters, [str(i) for i in range(len(filters))], out_dir / "first_layer_filters.png",
        columns=min(len(filters), 8), cell=0.9,
        suptitle=f"first layer: {len(filters)} filters of {'x'.join(map(str, conv.weight.shape[1:]))}"))

    stages = model.stage_modules()
    maps = _stage_outputs(model, x, stages)
    names = [name for name, _ in stages] or ["features"]
    for index, (name, output) in enumerate(zip(names, maps), start=1):
        if output.ndim != 4:
            continue  # not a feature map (C, h, w)
        channels, height, width = output.shape[1:]
        # The most active channels first: with 256 maps, the first 32 by index are an arbitrary sample.
        order = output[0].mean(dim=(1, 2)).argsort(descending=True)[:max_maps].tolist()
        title = f"stage {index}: {channels}×{height}×{width}"
        if channels > len(order):
            title += f" (the {len(order)} most active of {channels} channels)"
        path = plots.feature_maps(output[0, order].float().numpy(), order, out_dir / f"stage_{index}.png", title)
        result.files.append(path)
        result.stage_names.append(name)
        result.stage_shapes.append((channels, height, width))
    return result


__all__ = ["InspectResult", "filter_images", "first_conv", "inspect_run"]


def show(result: InspectResult) -> None:
    """The shapes and the files written."""
    print(result.describe(), flush=True)
