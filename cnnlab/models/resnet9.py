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
    head     global average pool, dropout, linear w3 -> classes

Widths 32-64-128-256 by default (1.6 M parameters, 96 M multiply-accumulates per 128 px image): on a 2-core
CPU it trains at ~170 img/s at 128 px (~100 img/s with the data pipeline sharing the cores), so a few
thousand photos take 20-30 s an epoch and a good classifier takes minutes. Measured on clothing-small with
2-minute budgets: 55-65% validation accuracy at these widths, 37% at 48-96-192-384 (2 epochs fit) and
21% at 64-128-256-512 (1 epoch); the wider nets are the better choice on a GPU or with hours
(--model-option widths=[64,128,256,512]).
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


class ResNet9(nn.Module):
    """features(): stem and three stages; head(): global average pooling, dropout, linear."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = (32, 64, 128, 256),
                 dropout: float = 0.2, patch: int = 4):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = conv_bn(3, w0, kernel_size=patch, stride=patch)
        self.stages = nn.Sequential(stage(w0, w1, residual=True), stage(w1, w2, residual=False),
                                    stage(w2, w3, residual=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(w3, num_classes)
        self.min_input_size = patch * 8  # the stem, then three halvings
        self.fixed_input_size = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, w3, S/32, S/32)"""
        return self.stages(self.stem(x))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(N, w3, h, w) -> (N, num_classes)"""
        return self.fc(self.dropout(self.pool(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """The stem and the three stages; the last one's output is features(x)."""
        return [("stem", self.stem)] + [(f"stages.{name}", module) for name, module in self.stages.named_children()]

    def classifier(self) -> nn.Module:
        """The linear layer after pooling."""
        return self.fc


@register_model("resnet9")
def resnet9(num_classes: int, widths=(32, 64, 128, 256), dropout: float = 0.2, patch: int = 4,
            img_size: int | None = None) -> ResNet9:
    """ResNet-9 with a patchify stem: cnnlab's default for training from scratch (see the module docstring)."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4:
        raise ValueError(f"resnet9 takes 4 widths (stem and three stages), got {len(widths)}")
    return ResNet9(num_classes, widths=widths, dropout=dropout, patch=int(patch))
