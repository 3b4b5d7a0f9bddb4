"""An exponential moving average (EMA) of the weights: the model that is evaluated and saved.

The weights after the last step are one noisy point of a noisy walk; their running average sits in the
middle of the recent walk and generalises better (Polyak averaging; timm's ModelEma, Izmailov et al.
2018). Each step, every floating-point tensor of the state dict (BatchNorm statistics included) moves
towards the training model's by 1 - decay; integer buffers are copied.

The decay is set by the run's length, not by a constant tuned for one: the average looks back over about
HORIZON of the steps (decay = 1 - 1 / (HORIZON * total steps)), so it means the same for 200 steps or
200,000. Early on, when there is little to average, a warm-up (timm's) lowers it: min(decay, (1 + t) / (10 + t)).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

HORIZON = 0.1  # look back over the last ~10% of the steps: long enough to smooth, short enough to keep up
MIN_DECAY, MAX_DECAY = 0.9, 0.9999


def decay_for(total_steps: int) -> float:
    """The decay whose averaging window is about HORIZON of a run of `total_steps` steps."""
    return min(MAX_DECAY, max(MIN_DECAY, 1 - 1 / max(HORIZON * total_steps, 1)))


class WeightAverage:
    """An EMA copy of a model (same class, same device), updated after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float, steps: int = 0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.steps = steps

    def current_decay(self) -> float:
        """The decay of the next update, with the warm-up."""
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s weights and buffers."""
        weight = 1 - self.current_decay()
        for average, current in zip(self.model.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current, weight)
            else:
                average.copy_(current)
        self.steps += 1

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged tensors, for the checkpoint."""
        return self.model.state_dict()

    def load(self, tensors: dict[str, torch.Tensor], steps: int) -> None:
        """Put the average back as a checkpoint held it."""
        self.model.load_state_dict(tensors, strict=True)
        self.steps = steps
