"""The learning-rate range test (Smith 2015; fastai's `lr_find`): train for a few hundred steps while the
learning rate grows exponentially from tiny to huge, record the loss, and read a good peak LR off the curve.

At tiny learning rates the loss barely moves, over a middle range it falls, and at too large ones it
explodes. The curve is smoothed with a bias-corrected exponential moving average (one batch is noisy)
and the test stops once the smoothed loss exceeds `diverge_factor` x its best: nothing to learn there.

Suggestion rule (`suggest_lr`): fastai's default, "valley" (ESRI's rule). Take the longest stretch over
which the smoothed loss keeps falling (the longest decreasing subsequence, in log-lr order) and pick
the point halfway along it, in log-lr. Why this rule, of those fastai offers:
  - steepest descent (min d loss / d log lr) picks a single point of a noisy derivative; on short,
    small-batch runs it jumps between the flat start and the cliff before divergence;
  - minimum / 10 depends on where exactly the minimum is, which the EMA's lag (~1/(1-beta) steps)
    pushes towards larger LRs;
  - valley uses the whole falling part, so one noisy batch moves it little, and it lies by construction
    below the minimum, where the loss still falls fast: a safe *peak* LR for the one-cycle schedule.
Like fastai, the first tenth of the steps (the EMA's warm-up) and the last five (the blow-up) are left
out. If the smoothed loss never fell by MIN_FALL (10%), there is no valley to read: a hard task that needs
more than the test's few steps per LR to start learning gives a flat curve, then a climb. The rule then
returns the optimizer's default LR, capped at a tenth of the LR where the loss starts to climb (Smith's
"an order of magnitude below the blow-up"), and says so in `reason`.

The model's parameters and buffers (BatchNorm statistics), its train/eval modes, its gradients, the
sampler's epoch and the global RNG states are restored afterwards: a range test changes nothing.
"""

from __future__ import annotations

import copy
import math
import random
import sys
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab import plots
from cnnlab.config import TrainConfig, default
from cnnlab.data.loaders import skip_sampler
from cnnlab.errors import CnnlabError
from cnnlab.training.forward import ImageInputs, InputPipeline
from cnnlab.training.optim import DEFAULT_LR, build_optimizer
from cnnlab.training.record import LR_FIND_PNG, write_lr_find

MIN_STEPS = 100  # fastai's default length; fewer steps resolve the curve too coarsely over 8 decades
MAX_PASSES = 10  # beyond ~10 passes over a small training set the test measures memorisation, not the LR
SKIP_START = 0.1  # share of the first steps left out of the suggestion: the EMA is still warming up
SKIP_END = 5  # last steps left out of the suggestion: the blow-up that stopped the test
# A fall of the smoothed loss smaller than this share is noise (a batch-to-batch wobble), not a valley: a
# learnable task falls from ln(K) by far more once the LR is right, unless it learns slower than the test.
MIN_FALL = 0.10
CLIMB = 0.10  # 10% above its minimum: the smoothed loss has left its noise band and is blowing up


@dataclass
class LRFindResult:
    """The recorded range test: one entry per step, and the suggested peak learning rate."""

    lrs: list[float]
    """Learning rate of each step, growing exponentially."""
    losses: list[float]
    """Raw training loss of each step's batch."""
    smoothed: list[float]
    """Bias-corrected exponential moving average of `losses` (what the suggestion reads)."""
    suggestion: float
    """Suggested peak learning rate."""
    reason: str
    """How the suggestion was read off the curve, in one sentence."""
    diverged: bool = False
    """True if the test stopped early because the smoothed loss exploded (or became NaN/inf)."""

    def describe(self) -> str:
        """One line for the terminal."""
        stop = f"stopped at lr {self.lrs[-1]:.2e} (loss diverged)" if self.diverged \
            else f"ran to lr {self.lrs[-1]:.2e}"
        return f"suggested lr: {self.suggestion:.2e} ({self.reason}); {len(self.lrs)} steps, {stop}"


def planned_steps(num_steps: int, batches_per_pass: int) -> int:
    """Steps the test runs: `num_steps`, but at most MAX_PASSES passes over a short loader
    (never fewer than MIN_STEPS, cycling the loader as needed)."""
    return min(num_steps, max(MIN_STEPS, MAX_PASSES * batches_per_pass))


def _batches(loader):
    """Non-empty batches from the loader, cycled; each pass is a new epoch of the sampler (fresh augmentation)."""
    sampler = skip_sampler(loader)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            if len(batch):  # a batch of unreadable files only comes back empty
                empty = False
                yield batch
        if empty:
            raise CnnlabError("the training loader yields no readable images; check the training split "
                              "with `cnnlab data check`")
        epoch += 1


def _rng_states(device: torch.device) -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def lr_find(model: nn.Module, loader, optimizer_name: str, pipeline: InputPipeline, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 200, smoothing: float = 0.98,
            diverge_factor: float = 4.0, weight_decay: float = default(TrainConfig, "weight_decay"),
            loss_fn: nn.Module | None = None, inputs: Callable | None = None) -> LRFindResult:
    """Run the LR range test on the training loader and restore the model afterwards. `inputs`: how training makes
    the net's input from a batch (cnnlab.training.forward.ImageInputs by default; a bag run's BagInputs)."""
    if not 0 < start_lr < end_lr:
        raise CnnlabError(f"lr_find needs 0 < start_lr < end_lr; got start_lr={start_lr}, end_lr={end_lr}")
    if not 0 <= smoothing < 1:
        raise CnnlabError(f"smoothing={smoothing} must be in [0, 1)")
    steps = planned_steps(max(num_steps, 2), len(loader))
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    # Everything the test changes, to put back afterwards (deep copies: the test updates in place).
    saved_state = copy.deepcopy(model.state_dict())
    saved_modes = {name: module.training for name, module in model.named_modules()}
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    saved_epoch = skip_sampler(loader).epoch
    # a DataLoader with its own generator draws each iterator's worker seed from it: put that back too
    generator = getattr(loader, "generator", None)
    saved_generator = generator.get_state() if generator is not None else None
    device, precision = pipeline.device, pipeline.precision
    saved_rng = _rng_states(device)
    inputs = inputs or ImageInputs(pipeline, keep_scale=False, num_classes=0)

    optimizer = build_optimizer(model, optimizer_name, start_lr, weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
    ratio = (end_lr / start_lr) ** (1 / (steps - 1))  # lr_i = start_lr * ratio**i, i = 0 .. steps-1
    lrs, losses, smoothed = [], [], []
    average, best, diverged = 0.0, math.inf, False
    model.train()
    try:
        batches = _batches(loader)
        while len(lrs) < steps:
            batch = next(batches)
            lr = start_lr * ratio ** len(lrs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # as training sees them: images (MixUp/CutMix-blended, with soft targets, when it blends), or bags
            x, targets = inputs(model, batch, inputs.steady_epoch)
            labels = batch.labels.to(device, non_blocking=True) if targets is None else targets
            with precision.autocast(device):
                logits = model(*x)                       # (N, K)
                loss = loss_fn(logits.float(), labels)   # fp32 loss, as in train_one_epoch
            value = loss.item()
            lrs.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                smoothed.append(float("nan"))
                diverged = True
                break
            average = smoothing * average + (1 - smoothing) * value
            smoothed.append(average / (1 - smoothing ** len(lrs)))  # bias correction: average starts at 0
            best = min(best, smoothed[-1])
            if smoothed[-1] > diverge_factor * best:
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    finally:
        model.load_state_dict(saved_state)
        for name, module in model.named_modules():
            module.training = saved_modes[name]
        for parameter, grad in zip(model.parameters(), saved_grads):
            parameter.grad = grad
        if saved_epoch is not None:
            skip_sampler(loader).set_epoch(saved_epoch)
        if saved_generator is not None:
            generator.set_state(saved_generator)
        _set_rng_states(saved_rng)
    suggestion, reason = suggest_lr(lrs, smoothed, fallback=DEFAULT_LR.get(optimizer_name))
    return LRFindResult(lrs, losses, smoothed, suggestion, reason, diverged)


def _longest_fall(values: np.ndarray) -> tuple[int, int]:
    """(first, last) index of the longest strictly decreasing subsequence of `values` (O(n^2), n <= a few hundred)."""
    n = len(values)
    length = np.ones(n, dtype=int)   # length[i]: longest decreasing chain ending at i
    first = np.arange(n)             # first[i]: where that chain starts
    for i in range(1, n):
        earlier = np.nonzero(values[:i] > values[i])[0]
        if len(earlier):
            # of the longest chains to extend, the one starting latest: on a flat start (equal losses)
            # the fall begins where the plateau ends, not at its first point
            j = earlier[len(earlier) - 1 - np.argmax(length[earlier][::-1])]
            length[i], first[i] = length[j] + 1, first[j]
    last = int(np.argmax(length))
    return int(first[last]), last


def _climb(loss: np.ndarray) -> int | None:
    """First index after the minimum where the smoothed loss is CLIMB above it (the start of the blow-up).
    Searching after the minimum ignores the wobble of the first, noisier averages."""
    lowest = int(np.argmin(loss))
    above = np.nonzero(loss[lowest:] > (1 + CLIMB) * loss[lowest])[0]
    return lowest + int(above[0]) if len(above) else None


def suggest_lr(lrs: list[float], smoothed: list[float], fallback: float | None = None) -> tuple[float, str]:
    """Suggested peak LR and how it was found: halfway along the longest fall of the smoothed loss
    (fastai's "valley"); if the loss never fell by MIN_FALL, `fallback` (the optimizer's default) capped
    at a tenth of the LR where the loss starts to climb. See the module docstring."""
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    if not finite:
        raise CnnlabError("the LR range test recorded no finite loss; check the data, or lower start_lr")
    n = finite[-1] + 1  # NaN only ever comes last: the test stops at the first one
    lr = np.asarray(lrs[:n], dtype=float)
    loss = np.asarray(smoothed[:n], dtype=float)
    start, end = int(n * SKIP_START), n - SKIP_END
    if end - start < 10:  # a very short test: read every point
        start, end = 0, n
    first, last = _longest_fall(loss[start:end])
    first, last = first + start, last + start
    fall = (loss[first] - loss[last]) / abs(loss[first])
    if last - first >= 2 and fall >= MIN_FALL:
        middle = math.exp((math.log(lr[first]) + math.log(lr[last])) / 2)
        return float(middle), (f"halfway (in log lr) along the longest fall of the smoothed loss "
                               f"({100 * fall:.0f}% lower), from lr {lr[first]:.1e} to {lr[last]:.1e}")
    climb = _climb(loss[start:])
    ceiling = (lr[climb + start] if climb is not None else lr[-1]) / 10
    where = f"climbs from lr {lr[climb + start]:.1e}" if climb is not None else f"never climbs up to {lr[-1]:.1e}"
    if fallback is not None and fallback <= ceiling:
        suggestion, how = fallback, f"the optimizer's default {fallback:.1e}, below a tenth of where the loss {where}"
    else:
        suggestion, how = ceiling, f"a tenth of the lr where the loss {where}"
    suggestion = min(max(suggestion, lrs[0]), lrs[n - 1])
    return float(suggestion), (f"the loss did not fall by {100 * MIN_FALL:.0f}% within the test, so no valley "
                               f"to read; using {how}: look at the plot")


# --------------------------------------------------------------------------------------------
# From a TrainConfig: used by fit(lr="auto") and by `cnnlab lr-find`
# --------------------------------------------------------------------------------------------

def run_for_config(config: TrainConfig, model: nn.Module, train_loader, pipeline: InputPipeline,
                   num_steps: int = 200, inputs: Callable | None = None) -> LRFindResult:
    """lr_find with the optimizer, weight decay, label smoothing and batch inputs the training run will use."""
    return lr_find(model, train_loader, config.optimizer, pipeline, num_steps=num_steps,
                   weight_decay=config.weight_decay,
                   loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), inputs=inputs)


def suggest_lr_for_config(config: TrainConfig, model: nn.Module, train_loader, pipeline: InputPipeline,
                          verbose: bool = True, run_dir: Path | None = None, inputs: Callable | None = None) -> float:
    """The suggested LR for fit(lr='auto'); with `run_dir`, also writes lr_find.png and lr_find.json there."""
    result = run_for_config(config, model, train_loader, pipeline, inputs=inputs)
    if verbose:
        print(f"lr finder: {result.describe()}", file=sys.stderr, flush=True)
    if run_dir is not None:
        write_lr_find(Path(run_dir), as_json(result))
        plots.lr_find_curve(result.lrs, result.losses, result.smoothed, result.suggestion,
                            Path(run_dir) / LR_FIND_PNG, title=f"LR range test: {config.model}")
    return result.suggestion


def as_json(result: LRFindResult) -> dict:
    return {"suggestion": result.suggestion, "reason": result.reason, "diverged": result.diverged,
            "lrs": result.lrs, "losses": result.losses, "smoothed": result.smoothed}
