"""Running a model over a loader without gradients: logits for evaluation and prediction."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.device import Precision
from cnnlab.progress import Progress


def to_device(images: torch.Tensor, device: torch.device, precision: Precision) -> torch.Tensor:
    """Move a batch (N, 3, H, W) to the device in the memory format the model uses."""
    images = images.to(device, non_blocking=True)
    if precision.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def collect_logits(model: nn.Module, loader: DataLoader, device: torch.device, precision: Precision,
                   description: str = "eval", show_progress: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, K) float32 on CPU, labels (N,), dataset indices (N,)) for every readable image."""
    model.eval()
    all_logits, all_labels, all_indices = [], [], []
    with Progress(len(loader.dataset), description, enabled=show_progress) as progress:
        for images, labels, indices in loader:
            if images.numel() == 0:
                continue
            with precision.autocast(device):
                logits = model(to_device(images, device, precision))
            all_logits.append(logits.float().cpu())
            all_labels.append(labels)
            all_indices.append(indices)
            progress.update(len(labels))
    if not all_logits:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0, 0), empty, empty
    return torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_indices)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a set of logits."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy
