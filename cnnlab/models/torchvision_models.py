"""torchvision classification models by name, with the classifier resized to our classes and the
same features()/head() seam as cnnlab's own models.

Two families cover the common architectures:
  "fc"       (resnet, regnet):              children up to avgpool | avgpool -> flatten -> fc
  "features" (mobilenet, efficientnet, convnext): net.features      | pool -> (flatten) -> classifier
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import register_model

# name -> family; a curated list of what trains usefully on CPU and small GPUs.
TORCHVISION_MODELS = {
    "resnet18": "fc", "resnet34": "fc", "resnet50": "fc",
    "regnet_y_400mf": "fc", "regnet_y_800mf": "fc",
    "mobilenet_v2": "features", "mobilenet_v3_small": "features", "mobilenet_v3_large": "features",
    "efficientnet_b0": "features", "efficientnet_b1": "features", "convnext_tiny": "features",
}


class TorchvisionClassifier(nn.Module):
    """Wraps a torchvision model; state dict keys are the torchvision ones under `net.`."""

    def __init__(self, name: str, net: nn.Module, family: str):
        super().__init__()
        self.name = name
        self.net = net
        self.family = family
        self.min_input_size = 32  # five stride-2 stages

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C, H/32, W/32) last feature maps, before global pooling."""
        if self.family == "features":
            return self.net.features(x)
        for name, module in self.net.named_children():
            if name in ("avgpool", "fc"):
                break
            x = module(x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, num_classes)"""
        if self.family == "fc":
            return self.net.fc(torch.flatten(self.net.avgpool(x), 1))
        pool = getattr(self.net, "avgpool", None)
        x = pool(x) if pool is not None else nn.functional.adaptive_avg_pool2d(x, 1)
        if not self.name.startswith("convnext"):  # convnext's classifier starts with LayerNorm2d + Flatten
            x = torch.flatten(x, 1)
        return self.net.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _replace_last_linear(module: nn.Module, num_classes: int, dropout: float | None) -> nn.Module:
    """Return `module` with its last nn.Linear swapped for one with num_classes outputs."""
    if isinstance(module, nn.Linear):
        linear = nn.Linear(module.in_features, num_classes)
        return nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear
    last = [name for name, child in module.named_children() if isinstance(child, (nn.Linear, nn.Sequential))][-1]
    setattr(module, last, _replace_last_linear(getattr(module, last), num_classes, None))
    return module


def build_torchvision(name: str, num_classes: int, pretrained: bool = False, dropout: float = 0.5,
                      img_size: int | None = None) -> TorchvisionClassifier:
    """torchvision model `name` with a new classifier; ImageNet weights when pretrained."""
    family = TORCHVISION_MODELS[name]
    weights = "DEFAULT" if pretrained else None
    try:
        net = torchvision.models.get_model(name, weights=weights)
    except Exception as error:  # download or cache failure: urllib, OSError, hash mismatch...
        if not pretrained:
            raise
        raise CnnlabError(
            f"could not load pretrained ImageNet weights for {name} ({type(error).__name__}: {error}); "
            f"this needs a network download once (cached under $TORCH_HOME), or train without --pretrained"
        ) from None
    if family == "fc":
        # resnet/regnet have no dropout of their own; add the lecture's dropout before the classifier
        net.fc = _replace_last_linear(net.fc, num_classes, dropout)
    else:
        net.classifier = _replace_last_linear(net.classifier, num_classes, None)
    return TorchvisionClassifier(name, net, family)


def _factory(name: str):
    def factory(num_classes: int, pretrained: bool = False, dropout: float = 0.5, img_size: int | None = None):
        return build_torchvision(name, num_classes, pretrained=pretrained, dropout=dropout)
    factory.__doc__ = f"torchvision {name} with a {{num_classes}}-way classifier."
    return factory


for _name in TORCHVISION_MODELS:
    register_model(_name)(_factory(_name))
