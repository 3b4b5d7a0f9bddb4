"""A small model registry: name -> factory(num_classes, **options) -> an nn.Module that describes itself.

Every registered model has (a test checks each one):
    features(x)        (N, 3, H, W) -> (N, C, h, w) last feature maps (an MLP: its hidden layer)
    head(f)            features -> (N, num_classes) logits; forward(x) = head(features(x))
    stage_modules()    [(name, module)] whose outputs are the successive feature maps ([] for an MLP):
                       what `inspect` shows and Grad-CAM reads (the last one)
    classifier()       the module after the features that a linear probe trains (--freeze)
    min_input_size     the smallest image side it accepts
    fixed_input_size   the one side it accepts (an MLP), or None for any size >= min_input_size
Callers ask the model through these; none matches on layer names or model names.

What the registry knows of a model besides its factory is one record (ModelEntry, like timm's pretrained_cfg):
the options tiled runs use, the input normalisation its weights expect (a run stores it in its preprocessing,
so training, eval, predict, export and serve all apply it), and where --pretrained finds ImageNet weights.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from cnnlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cnnlab.errors import CnnlabError
from cnnlab.models.mil import bag_model

# Where --pretrained finds a model's ImageNet weights
OFFLINE = "offline"  # in a package installed with cnnlab: no network, ever
HUB = "hub"  # torch's hub cache ($TORCH_HOME/hub/checkpoints), else downloaded once by torchvision


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and what callers need to know before building it."""

    factory: Callable[..., nn.Module]
    tiled: dict = field(default_factory=dict)
    """Factory options a run that trains on tiles uses by default (the user's --model-option wins)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean the input is normalised with (RGB, pixels scaled to 0..1)."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation the input is divided by."""
    pretrained: str | None = None
    """Where --pretrained finds ImageNet weights: OFFLINE, HUB, or None (the model has none)."""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, tiled: dict | None = None, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD,
                   pretrained: str | None = None):
    """Decorator: make a factory available to create_model under `name`; `tiled`: the factory options a run that
    trains on tiles uses by default; `mean`/`std`: the input normalisation; `pretrained`: OFFLINE, HUB or None."""
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(factory, dict(tiled or {}), tuple(mean), tuple(std), pretrained)
        return factory
    return wrap


def tiled_options(name: str) -> dict:
    """The factory options model `name` takes by default in a tiled run ({} for most models)."""
    entry = _REGISTRY.get(name)
    return dict(entry.tiled) if entry else {}


def input_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) model `name`'s input is normalised with; ImageNet's for a name not registered."""
    entry = _REGISTRY.get(name)
    return (entry.mean, entry.std) if entry else (IMAGENET_MEAN, IMAGENET_STD)


def list_models() -> list[str]:
    """List the model names `--model` accepts (create_model's names, sorted)."""
    return sorted(_REGISTRY)


def pretrained_models(where: str = OFFLINE) -> list[str]:
    """Names whose ImageNet weights --pretrained finds `where` (OFFLINE: installed with cnnlab), sorted."""
    return sorted(name for name, entry in _REGISTRY.items() if entry.pretrained == where)


def create_model(name: str, num_classes: int, *, bag: bool = False, **options) -> nn.Module:
    """Build a registered model with a classifier for `num_classes` classes; `bag`: as the tile encoder of a
    gated-attention multiple-instance classifier (cnnlab.models.mil; a run with --aggregate attention records it
    in its model options, so every rebuild makes the same model)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_models(), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise CnnlabError(f"unknown model '{name}'; {hint}available: {', '.join(list_models())}")
    if num_classes < 2:
        raise CnnlabError(f"--num-classes {num_classes}: a classifier needs at least 2 classes")
    entry = _REGISTRY[name]
    if entry.pretrained is None and "pretrained" in options:
        if options.pop("pretrained"):
            raise CnnlabError(f"model '{name}' has no pretrained weights; --pretrained works offline with "
                              f"{', '.join(pretrained_models(OFFLINE))} (weights installed with cnnlab), and with "
                              f"the torchvision models ({', '.join(pretrained_models(HUB)[:3])}, ...) once their "
                              "ImageNet file is in torch's hub cache")
    try:
        model = entry.factory(num_classes=num_classes, **options)
    except (TypeError, ValueError) as error:  # an unknown option, or a known one with a value it cannot take
        raise CnnlabError(f"bad option for model '{name}': {error}") from None
    return bag_model(model, num_classes, name) if bag else model
