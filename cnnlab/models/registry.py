"""A small model registry: name -> factory(num_classes, **options) -> nn.Module with features/head."""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from cnnlab.errors import CnnlabError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: make a factory available to create_model under `name`."""
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        return factory
    return wrap


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
        raise CnnlabError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    try:
        return _REGISTRY[name](num_classes=num_classes, **options)
    except TypeError as error:
        raise CnnlabError(f"bad option for model '{name}': {error}") from None
