"""Models: a registry (create_model, list_models) and the models registered in it.

Every model has features(x) -> feature maps and head(features) -> logits, and an attribute
min_input_size (the smallest image side it accepts)."""

from cnnlab.models import mlp, simple_cnn, torchvision_models  # noqa: F401  (registers the models)
from cnnlab.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
