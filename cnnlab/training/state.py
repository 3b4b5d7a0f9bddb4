"""The state of a training run between two steps, and its checkpoint file for an exact resume.

    RUN/checkpoint.safetensors   one file, replaced atomically at the end of every epoch and on interrupt
        tensors   model.<name>              the model's state dict
                  optimizer.<i>.<key>       per-parameter optimizer state (AdamW moments, step, SGD momentum)
                  rng.torch, rng.cuda.<i>   torch's generator states (uint8)
        metadata  "cnnlab": JSON            format, config, classes, LoopState, optimizer param_groups,
                                            scheduler and GradScaler state, Python and NumPy RNG states,
                                            and the list of tensor names (checked on load)

Everything is data (tensors, JSON), never a pickle, so loading a checkpoint cannot run code. One file,
so the tensors and the side data cannot disagree: an interrupted write leaves the previous file.

What makes the resume exact: the shuffling and the augmentation of every image are a pure function of
(seed, epoch) (cnnlab.data.loaders.EpochSampler), so they need no saved state; `batches_done` says where
in the epoch to continue. Dropout draws from torch's global generator, saved here and restored last.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab.files import atomic_write
from cnnlab.models.weights import load_weights, state_dict_for_saving
from cnnlab.errors import CnnlabError
from cnnlab.training.record import CHECKPOINT

CHECKPOINT_NAME = CHECKPOINT  # the run folder's name for it (cnnlab.training.record)
FORMAT = "cnnlab-training-1"


@dataclass
class EpochSums:
    """Running sums of the epoch in progress (what one row of metrics.csv is computed from)."""

    loss_sum: float = 0.0
    """Sum over trained images of the batch's mean training loss."""
    images: int = 0
    """Images trained on (steps with a finite loss)."""
    correct: int = 0
    """Of those, correctly classified by the forward pass of their step."""
    skipped_steps: int = 0
    """Steps skipped this epoch because the loss was not finite."""
    lr: float | None = None
    """Learning rate of the epoch's last step."""


@dataclass
class LoopState:
    """What the epoch loop carries from step to step; saved in every checkpoint."""

    epoch: int = 0
    """Epochs finished."""
    batches_done: int = 0
    """Batches of epoch `epoch + 1` already trained (non-zero only in a checkpoint written mid-epoch)."""
    step: int = 0
    """Optimizer steps so far, skipped ones included (the schedule advances on both)."""
    epoch_sums: EpochSums = field(default_factory=EpochSums)
    """Running sums of the epoch in progress."""
    history: list[dict] = field(default_factory=list)
    """One row per finished epoch (the columns of metrics.csv)."""
    best_epoch: int = 0
    """Epoch with the lowest validation loss so far (its weights are best.safetensors)."""
    best_val_loss: float = math.inf
    best_val_acc: float = 0.0
    epochs_without_improvement: int = 0
    """Early-stopping counter (--patience)."""
    stopped_early: bool = False
    skipped_steps: int = 0
    """Steps skipped because the loss was not finite, in the whole run."""
    nonfinite_in_a_row: int = 0
    """Consecutive steps with a non-finite loss, up to now."""
    ema_steps: int = 0
    """Updates of the weight average so far (its warm-up depends on it)."""
    planned_steps: int = 0
    """With --time: the steps planned to fit the budget (0: every step of config.epochs)."""
    budget_replanned: bool = False
    """With --time: whether the plan was re-made after the first epoch (it is, at most once)."""
    budget_reached: bool = False
    """With --time: the budget ran out before the planned steps (training ended there)."""
    unreadable: dict = field(default_factory=dict)
    """{split: [[dataset index, epoch found], ...]} for images that could not be read."""

    def position(self) -> str:
        """Where the run is, e.g. 'epoch 3, after batch 5' or 'the end of epoch 2'."""
        if self.batches_done:
            return f"epoch {self.epoch + 1}, after batch {self.batches_done}"
        return f"the end of epoch {self.epoch}"

    def start_epoch(self) -> None:
        """Reset the per-epoch sums (called when an epoch has been recorded)."""
        self.batches_done = 0
        self.epoch_sums = EpochSums()

    @classmethod
    def from_dict(cls, values: dict) -> "LoopState":
        """Inverse of dataclasses.asdict (as stored in a checkpoint)."""
        values = dict(values)
        values["epoch_sums"] = EpochSums(**values.get("epoch_sums", {}))
        return cls(**values)


# --------------------------------------------------------------------------------------------
# random number generators
# --------------------------------------------------------------------------------------------

def capture_rng(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON) of every generator the loop draws from: torch CPU (and CUDA), NumPy, Python."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    side = {"numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}
    return tensors, side


def restore_rng(tensors: dict[str, torch.Tensor], side: dict, device: torch.device) -> None:
    """Inverse of capture_rng."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[name] for name in sorted(tensors) if name.startswith("rng.cuda.")]
    if device.type == "cuda" and cuda:
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    kind, keys, position, has_gauss, gauss = side["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = side["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------

def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of the per-parameter state under optimizer.<i>.<key>; everything else as JSON."""
    state = optimizer.state_dict()
    tensors, other = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                other.setdefault(str(index), {})[key] = value  # e.g. SGD's momentum_buffer=None
    return tensors, {"param_groups": state["param_groups"], "other_state": other}


def save_training_checkpoint(run_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             scheduler, scaler: torch.amp.GradScaler, state: LoopState, config: dict,
                             classes: list[str], device: torch.device,
                             extra: dict[str, torch.Tensor] | None = None,
                             other_ranks_rng: list[dict] | None = None) -> Path:
    """Write RUN/checkpoint.safetensors atomically; a failed write keeps the previous one (CnnlabError).

    `extra`: more tensors the loop keeps between epochs (the EMA weights, the best epoch's validation
    logits), stored under "extra.<name>" and returned by TrainingCheckpoint.extra(). `other_ranks_rng`: the
    JSON part of the other training processes' random-number states (their tensors come in `extra` as
    rng.rank<r>.<name>), so a resume with as many processes continues each exactly."""
    path = Path(run_dir) / CHECKPOINT_NAME
    tensors = {f"model.{name}": tensor for name, tensor in state_dict_for_saving(model).items()}
    tensors |= {f"extra.{name}": tensor.detach().to("cpu").contiguous().clone() for name, tensor in (extra or {}).items()}
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CnnlabError(f"refusing to write {path}: non-finite values in {', '.join(bad[:3])}; the previous "
                          "checkpoint is kept. Training diverged: lower the learning rate (--lr)")
    optimizer_tensors, optimizer_side = _optimizer_parts(optimizer)
    rng_tensors, rng_side = capture_rng(device)
    tensors |= optimizer_tensors | rng_tensors
    side = {"format": FORMAT, "config": config, "classes": classes, "state": asdict(state),
            "optimizer": optimizer_side, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_side, "tensors": sorted(tensors), "world_size": 1 + len(other_ranks_rng or []),
            "rng_ranks": other_ranks_rng or []}
    # json keeps NaN and Infinity (a val_loss of an epoch without readable images, best_val_loss before
    # the first epoch); Python's json reads them back.
    metadata = {"cnnlab": json.dumps(side)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


# --------------------------------------------------------------------------------------------
# loading and restoring
# --------------------------------------------------------------------------------------------

@dataclass
class TrainingCheckpoint:
    """A checkpoint file read back: its config and loop state, and the tensors to restore."""

    path: Path
    config: dict
    classes: list[str]
    state: LoopState
    tensors: dict[str, torch.Tensor]
    side: dict

    def extra(self) -> dict[str, torch.Tensor]:
        """The `extra` tensors given to save_training_checkpoint, by their names."""
        return {name[len("extra."):]: t for name, t in self.tensors.items() if name.startswith("extra.")}


def load_training_checkpoint(run_dir: str | Path) -> TrainingCheckpoint:
    """Read RUN/checkpoint.safetensors, checking that it is complete."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if not run_dir.is_dir():
        raise CnnlabError(f"--resume {run_dir}: no such run folder; give the --out folder of a `cnnlab train` run")
    if not path.exists():
        raise CnnlabError(f"--resume {run_dir}: there is no {CHECKPOINT_NAME} in it (the run stopped before its "
                          "first checkpoint, or an older cnnlab wrote it); start a new run, e.g. with "
                          f"--weights {run_dir / 'last.safetensors'}")
    tensors, side = load_weights(path)
    if side.get("format") != FORMAT:
        raise CnnlabError(f"{path} is not a cnnlab training checkpoint (format {side.get('format')!r}, "
                          f"expected {FORMAT!r})")
    missing = sorted(set(side.get("tensors", [])) - set(tensors))
    if missing:
        raise CnnlabError(f"{path} is incomplete: tensors {', '.join(missing[:3])} are missing; "
                          "the file is damaged, start a new run with --weights RUN/last.safetensors")
    try:
        state = LoopState.from_dict(side["state"])
    except TypeError as error:
        raise CnnlabError(f"{path} has a loop state this cnnlab does not understand ({error})") from None
    return TrainingCheckpoint(path, side["config"], side["classes"], state, tensors, side)


def _shaped_like(parameter: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # the saved tensor is contiguous; give it the parameter's memory format (channels_last) so the
    # resumed optimizer runs the same kernels on the same layouts as the uninterrupted run
    if value.shape != parameter.shape:
        return value
    return torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def restore_training(checkpoint: TrainingCheckpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler, scaler: torch.amp.GradScaler, device: torch.device, rank: int = 0,
                     world_size: int = 1) -> None:
    """Put model, optimizer, scheduler, GradScaler and every RNG back as they were when it was saved.

    Call it last, just before the loop: anything drawing random numbers after it would shift dropout.
    Process `rank` of `world_size` gets its own random-number state back when the checkpoint was written by
    as many processes; with another number of processes, the others keep the state they were seeded with.
    """
    tensors, side = checkpoint.tensors, checkpoint.side
    model_state = {name[len("model."):]: t for name, t in tensors.items() if name.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as error:
        raise CnnlabError(f"{checkpoint.path} does not fit the model of its config: {str(error)[:300]}") from None
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    per_parameter: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            parameter = parameters[int(index)]
            per_parameter.setdefault(int(index), {})[key] = \
                value if key == "step" else _shaped_like(parameter, value.to(parameter.device))
    for index, entries in side["optimizer"]["other_state"].items():
        per_parameter.setdefault(int(index), {}).update(entries)
    try:
        optimizer.load_state_dict({"state": per_parameter, "param_groups": side["optimizer"]["param_groups"]})
    except (ValueError, KeyError, IndexError) as error:
        raise CnnlabError(f"{checkpoint.path}: the optimizer state does not fit ({error})") from None
    scheduler.load_state_dict(side["scheduler"])
    if scaler.is_enabled() and side["scaler"]:
        scaler.load_state_dict(side["scaler"])
    if rank == 0:
        restore_rng(tensors, side["rng"], device)
    elif side.get("world_size", 1) == world_size and rank <= len(side.get("rng_ranks", [])):
        prefix = f"extra.rng.rank{rank}."
        restore_rng({name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)},
                    side["rng_ranks"][rank - 1], device)
