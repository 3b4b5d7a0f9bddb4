"""The lecture's baseline: a multilayer perceptron on raw pixels (flatten -> Linear -> ReLU ->
Dropout -> Linear). Its first layer has 3*H*W*hidden weights, so it grows with the image size."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import register_model


class MLP(nn.Module):
    """features() is the hidden layer, head() the dropout + output layer."""

    def __init__(self, num_classes: int, img_size: int, hidden: int = 512, dropout: float = 0.5,
                 in_channels: int = 3):
        super().__init__()
        self.img_size = img_size
        self.fc1 = nn.Linear(in_channels * img_size * img_size, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.min_input_size = img_size
        self.fixed_input_size = img_size  # it flattens the image: exactly img_size x img_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, hidden); the input must be exactly img_size x img_size."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"mlp was built for {self.img_size}x{self.img_size} inputs, got "
                             f"{tuple(x.shape[-2:])}")
        return torch.relu(self.fc1(x.flatten(1)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> (N, num_classes)"""
        return self.fc2(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """No convolutional stages: an MLP has no feature maps (inspect and Grad-CAM need a CNN)."""
        return []

    def classifier(self) -> nn.Module:
        """The output layer."""
        return self.fc2


@register_model("mlp")
def mlp(num_classes: int, img_size: int = 128, hidden: int = 512, dropout: float = 0.5) -> MLP:
    """Flatten -> Linear(3*S*S, hidden) -> ReLU -> Dropout -> Linear(hidden, classes)."""
    return MLP(num_classes, img_size=img_size, hidden=hidden, dropout=dropout)
