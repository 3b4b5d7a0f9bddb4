"""Optimizer and the schedules of a run: the per-step learning rate, and the image side per epoch."""

from __future__ import annotations

import math

import torch
from torch import nn

# Peak learning rates that train cnnlab's models from scratch with batch 32 and a warm-up.
DEFAULT_LR = {"adamw": 2e-3, "sgd": 0.05}


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                     backbone_lr: float = 1.0) -> list[dict]:
    """Weight decay on weight matrices and kernels only; not on biases and norm scales (ndim <= 1). With `lr` and
    `backbone_lr` < 1 (fine-tuning), everything but `model.classifier()` gets lr x backbone_lr: four groups, the
    classifier's first (its learning rate is the run's, the one logged)."""
    def split(parameters: list) -> list[dict]:
        trained = [p for p in parameters if p.requires_grad]
        return [{"params": [p for p in trained if p.ndim > 1], "weight_decay": weight_decay},
                {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0}]
    if backbone_lr == 1.0 or lr is None:
        return split(list(model.parameters()))
    head = list(model.classifier().parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    return split(head) + [group | {"lr": lr * backbone_lr} for group in split(body)]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    backbone_lr: float = 1.0) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.9; `backbone_lr`: the share of `lr` everything but the classifier
    trains at (parameter_groups)."""
    groups = parameter_groups(model, weight_decay, lr, backbone_lr)
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


def schedule_factor(name: str, total_steps: int, warmup_steps: int):
    """The LR multiplier as a function of the step: one-cycle, cosine with warm-up, or constant."""
    total_steps = max(total_steps, 1)
    if name == "onecycle":
        return lambda step: onecycle_factor(step, total_steps)
    if name == "cosine":
        warmup_steps = min(max(warmup_steps, 0), total_steps - 1)
        return lambda step: cosine_factor(step, total_steps, warmup_steps)
    return lambda step: 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule around the optimizer's lr: one-cycle, cosine with warm-up, or constant."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(name, total_steps, warmup_steps))


def set_schedule_length(scheduler: torch.optim.lr_scheduler.LambdaLR, name: str, total_steps: int,
                        warmup_steps: int) -> None:
    """Stretch or shrink a running schedule to `total_steps` (a re-planned time budget); the step count stays."""
    scheduler.lr_lambdas = [schedule_factor(name, total_steps, warmup_steps) for _ in scheduler.lr_lambdas]


# Progressive resizing (fastai, FFCV), a schedule of the image side: small images early train several times
# faster and learn the coarse shapes; the last quarter at full size adapts the network (and its BatchNorm
# statistics) to the test size.
PROGRESSIVE_START = 0.5  # half the side: a quarter of the pixels and of the compute per image
PROGRESSIVE_FULL = 0.75  # full size from three quarters of the epochs on
PROGRESSIVE_MIN_EPOCHS = 4  # a shorter run has no room to grow: it trains at full size


def epoch_size(epoch: int, epochs: int, img_size: int, step: int) -> int:
    """Progressive resizing: the side of the training images in `epoch` (1-based) of `epochs`.

    From PROGRESSIVE_START of the side, growing linearly, to the full side by PROGRESSIVE_FULL of the epochs
    and after; rounded down to a multiple of `step` (the model's total stride, so every stage gets whole
    pixels). Runs shorter than PROGRESSIVE_MIN_EPOCHS train at full size throughout.
    """
    full_from = math.ceil(PROGRESSIVE_FULL * epochs)
    if epochs < PROGRESSIVE_MIN_EPOCHS or epoch >= full_from:
        return img_size
    start = PROGRESSIVE_START * img_size
    side = start + (img_size - start) * (epoch - 1) / max(full_from - 1, 1)
    return max(step, int(side // step) * step)


def epoch_sizes(epochs: int, img_size: int, step: int, progressive: bool) -> list[int]:
    """The training side of each epoch of a run of `epochs` epochs."""
    return [epoch_size(e, epochs, img_size, step) if progressive else img_size for e in range(1, epochs + 1)]
