"""cnnlab's default network for training from scratch: a ResNet-9 (Myrtle.ai / airbench family) with a
patchify stem, sized so that every convolution has enough channels to keep the CPU's (or GPU's) matrix
units busy.

Why this shape. On a CPU the cost of a convolution is its multiply-accumulates only when it is
compute-bound; a 3x3 convolution with 3-32 channels at full resolution is memory-bound (it streams a
large activation for little arithmetic), which is where simple_cnn and resnet18's stem spend their time.
Here the first layer cuts the image into 4x4 patches (a 4x4 convolution with stride 4, as ConvNeXt and
ViT do), so from then on the network runs at 1/16 of the pixels with 64+ channels: the arithmetic per
byte is high enough for the fast kernels. Three stages double the channels and halve the side with max
pooling (ResNet-9), two of them with a residual pair of 3x3 convolutions; BatchNorm after every
convolution lets it train at large learning rates from scratch.

    stem     conv 4x4 / 4, 3 -> w0                         S/4
    stage 1  conv 3x3 w0 -> w1, max-pool 2, residual(w1)    S/8
    stage 2  conv 3x3 w1 -> w2, max-pool 2                  S/16
    stage 3  conv 3x3 w2 -> w3, max-pool 2, residual(w3)    S/32
    head     global pool (average; or max, or their mean), dropout, linear w3 -> classes

The pooling (--model-option pool=avg|max|avgmax): average pooling asks every position of the last feature map
for evidence, right when the class fills the picture (a photo of a shirt). When it is decided by a few small
things anywhere in a large field (a 256 px tile holding three to five 24 px objects among clutter: a few of the
64 positions of its last feature map), the average dilutes their features in the clutter's; the maximum passes
the strongest position's features on whole (multiple-instance learning's "present anywhere"). Tiled runs use
avgmax (the mean of both, timm's "avgmax") by default (cnnlab.models.registry.tiled_options). Measured on the
objects synth set (3000 px images, 256 px tiles at scale 0.5, 2 CPU cores): average pooling with progressive
resizing's cropped tiles, training accuracy 0.40 after 3 epochs (chance 0.33); avgmax on whole tiles, 0.90 and
every validation image right after 3 epochs (the two changes were not measured apart).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import register_model


def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias: BatchNorm has one) -> BatchNorm -> ReLU; 3x3 convolutions keep the side (padding 1)."""
    padding = kernel_size // 2 if stride == 1 else 0
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + conv_bn(conv_bn(x)): the pair learns a correction, so depth does not make training harder."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def stage(in_channels: int, out_channels: int, residual: bool) -> nn.Sequential:
    """conv_bn to the new width, halve the side with max pooling, then optionally a residual pair."""
    layers = [conv_bn(in_channels, out_channels), nn.MaxPool2d(2)]
    if residual:
        layers.append(Residual(out_channels))
    return nn.Sequential(*layers)


POOLS = ("avg", "max", "avgmax")


def global_pool(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, h, w) -> (N, C): the mean, the maximum or the mean of both over the positions."""
    if pool == "avg":
        return x.mean((2, 3))
    if pool == "max":
        return x.amax((2, 3))
    return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))


class ResNet9(nn.Module):
    """features(): stem and three stages; head(): global pooling, dropout, linear."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = (32, 64, 128, 256),
                 dropout: float = 0.2, patch: int = 4, pool: str = "avg"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r}: resnet9 pools with one of {', '.join(POOLS)}")
        self.pool = pool
        w0, w1, w2, w3 = widths
        self.stem = conv_bn(3, w0, kernel_size=patch, stride=patch)
        self.stages = nn.Sequential(stage(w0, w1, residual=True), stage(w1, w2, residual=False),
                                    stage(w2, w3, residual=True))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(w3, num_classes)
        self.min_input_size = patch * 8  # the stem, then three halvings
        self.fixed_input_size = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, w3, S/32, S/32)"""
        return self.stages(self.stem(x))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(N, w3, h, w) -> (N, num_classes)"""
        return self.fc(self.dropout(global_pool(x, self.pool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """The stem and the three stages; the last one's output is features(x)."""
        return [("stem", self.stem)] + [(f"stages.{name}", module) for name, module in self.stages.named_children()]

    def classifier(self) -> nn.Module:
        """The linear layer after pooling."""
        return self.fc


@register_model("resnet9", tiled={"pool": "avgmax"})
def resnet9(num_classes: int, widths=(32, 64, 128, 256), dropout: float = 0.2, patch: int = 4, pool: str = "avg",
            img_size: int | None = None) -> ResNet9:
    """ResNet-9 with a patchify stem: cnnlab's default for training from scratch (see the module docstring)."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4:
        raise ValueError(f"resnet9 takes 4 widths (stem and three stages), got {len(widths)}")
    return ResNet9(num_classes, widths=widths, dropout=dropout, patch=int(patch), pool=str(pool))
