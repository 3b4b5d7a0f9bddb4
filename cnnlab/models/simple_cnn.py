"""The lecture's convnet: stages of Conv(3x3, s1, p1) -> BatchNorm -> ReLU -> MaxPool(2), then
global average pooling, dropout and one linear layer.

Global average pooling makes the parameter count independent of the image size, which is the
lecture's argument for convolution on large images: 1000x1000 costs no more weights than 64x64.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import register_model


class SimpleCNN(nn.Module):
    """Conv stages for features(), GAP + dropout + linear for head()."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256),
                 in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        stages = []
        for width in widths:
            # padding=1 keeps H, W for k=3 ("transform"); the pooling halves them ("reduce")
            stages.append(nn.Sequential(
                nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        self.min_input_size = 2 ** len(widths)  # each MaxPool2d(2) halves the side
        self.fixed_input_size = None  # any size >= min_input_size: global pooling follows the stages

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, widths[-1], H / 2**depth, W / 2**depth)"""
        return self.stages(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) feature maps -> (N, num_classes) logits"""
        x = self.pool(x).flatten(1)  # (N, C)
        return self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of each stage, in order; features(x) is the output of the last one."""
        return [(f"stages.{name}", stage) for name, stage in self.stages.named_children()]

    def classifier(self) -> nn.Module:
        """The layer that turns pooled features into logits (what a linear probe trains)."""
        return self.fc


@register_model("simple_cnn")
def simple_cnn(num_classes: int, widths=(32, 64, 128, 256), depth: int | None = None,
               dropout: float = 0.5, img_size: int | None = None) -> SimpleCNN:
    """The lecture's convnet; `depth` repeats/truncates widths (doubling each stage from widths[0])."""
    widths = tuple(int(w) for w in widths)
    if depth is not None:
        widths = tuple(widths[0] * 2 ** i for i in range(depth))
    return SimpleCNN(num_classes, widths=widths, dropout=dropout)
