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
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from cnnlab.errors import CnnlabError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TILED: dict[str, dict] = {}  # name -> factory options that tiled runs use unless the user gives them


def register_model(name: str, tiled: dict | None = None):
    """Decorator: make a factory available to create_model under `name`; `tiled`: the factory options a run that
    trains on tiles uses by default (the user's --model-option wins)."""
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        _TILED[name] = dict(tiled or {})
        return factory
    return wrap


def tiled_options(name: str) -> dict:
    """The factory options model `name` takes by default in a tiled run ({} for most models)."""
    return dict(_TILED.get(name, {}))


def list_models() -> list[str]:
    """Names create_model accepts, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a registered model with a classifier for `num_classes` classes."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_models(), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise CnnlabError(f"unknown model '{name}'; {hint}available: {', '.join(list_models())}")
    if num_classes < 2:
        raise CnnlabError(f"--num-classes {num_classes}: a classifier needs at least 2 classes")
    try:
        return _REGISTRY[name](num_classes=num_classes, **options)
    except (TypeError, ValueError) as error:  # an unknown option, or a known one with a value it cannot take
        raise CnnlabError(f"bad option for model '{name}': {error}") from None
