"""torchvision classification models by name, with the classifier resized to our classes and the
same seams as cnnlab's own models: features()/head(), stage_modules(), classifier(), min_input_size.

Two families cover the common architectures:
  "fc"       (resnet, regnet):              children up to avgpool | avgpool -> flatten -> fc
  "features" (mobilenet, efficientnet, convnext): net.features      | pool -> (flatten) -> classifier

ImageNet weights (`pretrained=True`) come from torch's hub cache, $TORCH_HOME/hub/checkpoints/<official
file name>, so a file put there by hand works offline; otherwise torchvision downloads it once (models whose
weights come installed with cnnlab, such as efficientnet_lite0, are in efficientnet_lite.py).
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import HUB, OFFLINE, pretrained_models, register_model

# name -> family; a curated list of what trains usefully on CPU and small GPUs.
TORCHVISION_MODELS = {
    "resnet18": "fc", "resnet34": "fc", "resnet50": "fc",
    "regnet_y_400mf": "fc", "regnet_y_800mf": "fc",
    "mobilenet_v2": "features", "mobilenet_v3_small": "features", "mobilenet_v3_large": "features",
    "efficientnet_b0": "features", "efficientnet_b1": "features", "convnext_tiny": "features",
}


class TorchvisionClassifier(nn.Module):
    """Wraps a torchvision model; state dict keys are the torchvision ones under `net.`, except the new
    classifier's (see official_names)."""

    def __init__(self, name: str, net: nn.Module, family: str, head_names: dict[str, str]):
        super().__init__()
        self.name = name
        self.net = net
        self.family = family
        # convnext's classifier starts with LayerNorm2d + Flatten: it takes the pooled maps unflattened
        self.flatten_before_classifier = not isinstance(getattr(net, "classifier", None), nn.Sequential) \
            or not any(isinstance(m, nn.Flatten) for m in net.classifier)
        self.min_input_size = 32  # five stride-2 stages
        self.fixed_input_size = None
        self._head_names = head_names  # {official name: own name} for the replaced classifier's tensors

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
        if self.flatten_before_classifier:
            x = torch.flatten(x, 1)
        return self.net.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) whose outputs are the successive feature maps; the last one is features(x)."""
        if self.family == "features":  # mobilenet, efficientnet, convnext
            return [(f"net.features.{name}", child) for name, child in self.net.features.named_children()]
        found = []  # resnet, regnet: the containers before avgpool, lone stem layers left out
        for name, child in self.net.named_children():
            if name in ("avgpool", "fc"):
                break
            children = list(child.named_children())
            if not children:
                continue  # conv1, bn1, relu, maxpool of the resnet stem
            if isinstance(child, nn.Sequential) and all(isinstance(c, nn.Sequential) for _, c in children):
                # regnet's trunk_output holds the stages (block1 .. block4), each itself a Sequential
                found += [(f"net.{name}.{sub}", c) for sub, c in children]
            else:
                found.append((f"net.{name}", child))
        return found

    def classifier(self) -> nn.Module:
        """The classifier after global pooling (what a linear probe trains)."""
        return self.net.fc if self.family == "fc" else self.net.classifier

    def official_names(self) -> dict[str, str]:
        """{torchvision's state-dict name: ours}, to load an official weight file (e.g. resnet18-f37072fd.pth)."""
        mapping = {}
        for own in self.state_dict():
            official = own[len("net."):]
            for theirs, ours in self._head_names.items():
                if official.startswith(ours + "."):
                    official = theirs + official[len(ours):]
            mapping[official] = own
        return mapping


def _replace_last_linear(module: nn.Module, num_classes: int, dropout: float | None,
                         path: str) -> tuple[nn.Module, dict[str, str]]:
    """`module` with its last nn.Linear swapped for one with num_classes outputs, and {old name: new name}
    of that Linear (relative to the net) when a dropout wrapper moved it."""
    if isinstance(module, nn.Linear):
        linear = nn.Linear(module.in_features, num_classes)
        if dropout:
            return nn.Sequential(nn.Dropout(dropout), linear), {path: f"{path}.1"}
        return linear, {}
    last = [name for name, child in module.named_children() if isinstance(child, (nn.Linear, nn.Sequential))][-1]
    replaced, names = _replace_last_linear(getattr(module, last), num_classes, None, f"{path}.{last}")
    setattr(module, last, replaced)
    return module, names


def official_weights_file(name: str) -> str:
    """Where torch's hub cache keeps torchvision's ImageNet weights for `name` ($TORCH_HOME/hub/checkpoints/...)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


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
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        raise CnnlabError(
            f"could not load pretrained ImageNet weights for {name} ({type(error).__name__}: "
            f"{str(error)[:120]}); offline, download {url} elsewhere and put it at {official_weights_file(name)} "
            f"(or pass --weights FILE), or use a model whose weights come installed: "
            f"{', '.join(pretrained_models(OFFLINE))}") from None
    if family == "fc":
        # resnet/regnet have no dropout of their own; add the lecture's dropout before the classifier
        net.fc, head_names = _replace_last_linear(net.fc, num_classes, dropout, "fc")
    else:
        net.classifier, head_names = _replace_last_linear(net.classifier, num_classes, None, "classifier")
    return TorchvisionClassifier(name, net, family, head_names)


def _factory(name: str):
    def factory(num_classes: int, pretrained: bool = False, dropout: float = 0.5, img_size: int | None = None):
        return build_torchvision(name, num_classes, pretrained=pretrained, dropout=dropout)
    factory.__doc__ = f"torchvision {name} with a {{num_classes}}-way classifier."
    return factory


for _name in TORCHVISION_MODELS:
    register_model(_name, pretrained=HUB)(_factory(_name))
