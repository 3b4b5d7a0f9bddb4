"""Optimizer and per-step learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

# Peak learning rates that train cnnlab's models from scratch with batch 32 and a warm-up.
DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.05}


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only; not on biases and norm scales (ndim <= 1)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.9."""
    groups = parameter_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def _cosine(start: float, end: float, fraction: float) -> float:
    """Cosine interpolation from start (fraction 0) to end (fraction 1)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def onecycle_factor(step: int, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0,
                    final_div_factor: float = 1e3) -> float:
    """LR multiplier of the one-cycle policy (Smith): cosine up from 1/div to 1, then down to
    1/(div*final_div). Written out instead of OneCycleLR, which fails for runs of a few steps."""
    warmup = max(1, round(total_steps * pct_start))
    if step < warmup:
        return _cosine(1.0 / div_factor, 1.0, step / warmup)
    return _cosine(1.0, 1.0 / (div_factor * final_div_factor), (step - warmup) / max(total_steps - warmup, 1))


def cosine_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return _cosine(1.0, 0.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule around the optimizer's lr: one-cycle, cosine with warm-up, or constant."""
    total_steps = max(total_steps, 1)
    if name == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: onecycle_factor(step, total_steps))
    if name == "cosine":
        warmup_steps = min(max(warmup_steps, 0), total_steps - 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total_steps, warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
