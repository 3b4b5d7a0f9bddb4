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
(seed, epoch) (cnnlab.loaders.EpochSampler), so they need no saved state; `batches_done` says where
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

from cnnlab.checkpoint import atomic_write, load_weights, state_dict_for_saving
from cnnlab.errors import CnnlabError

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "cnnlab-training-1"
# Options a resumed run may change: neither alters what the steps compute (the data order and the
# augmentation do not depend on the number of workers). --epochs only extends the run.
RESUME_OVERRIDES = ("epochs", "workers")


def _new_epoch_sums() -> dict:
    return {"loss_sum": 0.0, "images": 0, "correct": 0, "skipped_steps": 0, "lr": None}


@dataclass
class LoopState:
    """What the epoch loop carries from step to step; saved in every checkpoint."""

    epoch: int = 0
    """Epochs finished."""
    batches_done: int = 0
    """Batches of epoch `epoch + 1` already trained (non-zero only in a checkpoint written mid-epoch)."""
    step: int = 0
    """Optimizer steps so far, skipped ones included (the schedule advances on both)."""
    epoch_sums: dict = field(default_factory=_new_epoch_sums)
    """Running sums of the epoch in progress: loss_sum, images, correct, skipped_steps, lr."""
    history: list[dict] = field(default_factory=list)
    """One row per finished epoch (the columns of metrics.csv)."""
    best_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_acc: float = 0.0
    epochs_without_improvement: int = 0
    """Early-stopping counter (--patience)."""
    stopped_early: bool = False
    skipped_steps: int = 0
    """Steps skipped because the loss was not finite, in the whole run."""
    nonfinite_in_a_row: int = 0
    """Consecutive steps with a non-finite loss, up to now."""
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
        self.epoch_sums = _new_epoch_sums()


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
                             classes: list[str], device: torch.device) -> Path:
    """Write RUN/checkpoint.safetensors atomically; a failed write keeps the previous one (CnnlabError)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    tensors = {f"model.{name}": tensor for name, tensor in state_dict_for_saving(model).items()}
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CnnlabError(f"refusing to write {path}: non-finite values in {', '.join(bad[:3])}; the previous "
                          "checkpoint is kept. Training diverged: lower the learning rate (--lr)")
    optimizer_tensors, optimizer_side = _optimizer_parts(optimizer)
    rng_tensors, rng_side = capture_rng(device)
    tensors |= optimizer_tensors | rng_tensors
    side = {"format": FORMAT, "config": config, "classes": classes, "state": asdict(state),
            "optimizer": optimizer_side, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_side, "tensors": sorted(tensors)}
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
        state = LoopState(**side["state"])
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
                     scheduler, scaler: torch.amp.GradScaler, device: torch.device) -> None:
    """Put model, optimizer, scheduler, GradScaler and every RNG back as they were when it was saved.

    Call it last, just before the loop: anything drawing random numbers after it would shift dropout.
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
    restore_rng(tensors, side["rng"], device)


def resumed_config(run_dir: str | Path, checkpoint: TrainingCheckpoint, **overrides) -> dict:
    """The run's config.yaml (checked against the copy inside the checkpoint) with `overrides` applied.

    Only RESUME_OVERRIDES may change, and --epochs only upwards: a different learning rate, model or
    data would not be a continuation of the same run but a new one (use --weights for that).
    """
    import yaml

    run_dir = Path(run_dir)
    unknown = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if unknown:
        raise CnnlabError(f"--resume continues {run_dir} with its own options (config.yaml); only "
                          f"{', '.join('--' + n for n in RESUME_OVERRIDES)} can be given with it, not "
                          f"{', '.join('--' + n.replace('_', '-') for n in unknown)}; to change those, start a new "
                          f"run with --weights {run_dir / 'last.safetensors'}")
    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CnnlabError(f"{path} is missing; is {run_dir} a cnnlab run folder?") from None
    except yaml.YAMLError as error:
        raise CnnlabError(f"{path} is not valid YAML ({str(error).splitlines()[0]})") from None
    saved = checkpoint.config
    changed = sorted(k for k in set(saved) | set(config)
                     if k not in RESUME_OVERRIDES + ("out",) and saved.get(k) != config.get(k))
    if changed:
        name = changed[0]
        raise CnnlabError(f"{path} was edited since the checkpoint was written ({name}: {saved.get(name)!r} -> "
                          f"{config.get(name)!r}); put it back, or start a new run with --weights "
                          f"{run_dir / 'last.safetensors'}")
    config = dict(saved)
    config["out"] = str(run_dir)  # where the run is now, even if it was moved or started from another folder
    for name, value in overrides.items():
        if value is not None:
            config[name] = value
    if config["epochs"] < saved["epochs"]:
        raise CnnlabError(f"--epochs {config['epochs']} is fewer than the {saved['epochs']} epochs {run_dir} was "
                          "started with; --resume can only keep or extend the number of epochs")
    state = checkpoint.state
    if state.stopped_early:
        raise CnnlabError(f"{run_dir} stopped early at epoch {state.epoch} (--patience): there is nothing to resume; "
                          f"to train on, start a new run with --weights {run_dir / 'best.safetensors'}")
    if state.epoch >= config["epochs"]:
        raise CnnlabError(f"{run_dir} has already finished its {state.epoch} epochs; pass --epochs N with N > "
                          f"{state.epoch} to train it further")
    return config
