"""Models: a registry (create_model, list_models), the models registered in it (see registry.py for
what every model exposes), their weights on disk (weights.py) and the layer-by-layer summary (summary.py)."""

from cnnlab.models import efficientnet_lite, mlp, resnet9, simple_cnn, torchvision_models  # noqa: F401  (registers the models)
from cnnlab.models.registry import (create_model, input_normalization, list_models, pretrained_models, register_model,
                                    tiled_options)

__all__ = ["create_model", "input_normalization", "list_models", "pretrained_models", "register_model", "tiled_options"]
