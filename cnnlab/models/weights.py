"""A model's weights on disk: safetensors (data, not code), written atomically so a crash never destroys
the previous file; foreign .pt/.pth state dicts read only with weights_only=True.

`load_start_weights` copies a file's weights into a freshly built model (`--weights`): a cnnlab run's
safetensors, or an official torchvision (or timm, where its names match) state dict for the same
architecture, whose names the model translates itself (`model.official_names`). A classifier trained
for another number of classes stays freshly initialised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared tensors (what safetensors needs; channels_last is not contiguous)."""
    return {name: tensor.detach().to("cpu").contiguous().clone()
            for name, tensor in model.state_dict().items()}


def save_weights(model: torch.nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save a model's state dict as safetensors (metadata: JSON-serialisable dict), atomically."""
    tensors = state_dict_for_saving(model)
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CnnlabError(f"refusing to save {path}: non-finite values in {', '.join(bad[:3])}; "
                          "training diverged (lower the learning rate)")
    text_meta = {"cnnlab": json.dumps(metadata or {}, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=text_meta))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a state dict and its metadata from .safetensors, or a state dict from .pt/.pth.

    .pt/.pth files are pickles: they are read with torch.load(weights_only=True) and nothing else,
    so a malicious file is refused instead of running its code.
    """
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise CnnlabError(f"weights file {path} is empty (0 bytes); it was probably cut off while being written")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get("cnnlab", "{}")
            return tensors, json.loads(raw)
        except (SafetensorError, OSError, ValueError) as error:
            raise CnnlabError(f"weights file {path} is damaged or not a safetensors file ({error})") from None
    if suffix in (".pt", ".pth", ".bin"):
        return _load_pickled_state_dict(path), {}
    raise CnnlabError(f"weights file {path}: unknown type '{suffix}'; use .safetensors, .pt or .pth")


def _load_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    # weights_only=True is passed explicitly: it also holds when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
    # is set, and there is deliberately no fallback to weights_only=False.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for forbidden globals, RuntimeError/EOFError for damage
        text = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise CnnlabError(f"refused to load {path}: it is not a plain tensor state dict or it is damaged "
                          f"({text}); only weights (tensors) are read, never code") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CnnlabError(f"{path} does not hold a state dict (name -> tensor)")
    return obj


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prefixes DataParallel/DDP ("module.") and torch.compile ("_orig_mod.") add to every name."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(name.startswith(prefix) for name in state):
            state = {name[len(prefix):]: tensor for name, tensor in state.items()}
    return state


def _translate(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` in the model's own names: as it is, or translated from the official names the model knows."""
    own = model.state_dict().keys()
    if not own - state.keys() and not state.keys() - own:
        return state
    official = getattr(model, "official_names", None)  # {official name: own name}, e.g. torchvision's
    if official is None:
        return state
    mapping = official()
    if state.keys() <= mapping.keys() and len(state) == len(own):
        return {mapping[name]: tensor for name, tensor in state.items()}
    return state


def load_start_weights(model: nn.Module, path: str, model_name: str, num_classes: int) -> str:
    """Copy the weights in `path` into `model` (--weights); returns a line saying what was loaded.

    Every tensor must match by name and shape, except the classifier's when the file was trained on
    another number of classes: those stay freshly initialised, and the line says so.
    """
    state, meta = load_weights(path)  # safetensors, or .pt/.pth read with weights_only=True only
    if meta.get("model") and meta["model"] != model_name:
        raise CnnlabError(f"--weights {path} holds a '{meta['model']}' model but --model is '{model_name}'; "
                          f"pass --model {meta['model']}")
    state = _translate(model, _strip_wrappers(state))
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise CnnlabError(f"--weights {path} does not fit model '{model_name}' ("
                          + (f"missing: {', '.join(missing[:3])}" if missing else "")
                          + ("; " if missing and unexpected else "")
                          + (f"unexpected: {', '.join(unexpected[:3])}" if unexpected else "")
                          + "); check --model and --model-option against the run or architecture the weights "
                          "come from")
    different = [name for name in own if own[name].shape != state[name].shape]
    # the classifier's output layer: first dimension = number of classes, the rest as in the file
    head = [name for name in different if own[name].ndim == state[name].ndim > 0
            and own[name].shape[0] == num_classes and own[name].shape[1:] == state[name].shape[1:]]
    if different != head:
        name = next(n for n in different if n not in head)
        raise CnnlabError(f"--weights {path}: {name} has shape {tuple(state[name].shape)} in the file but "
                          f"{tuple(own[name].shape)} in model '{model_name}'; check --model-option and --img-size")
    file_classes = state[head[0]].shape[0] if head else num_classes
    for name in head:
        state[name] = own[name]  # keep the fresh initialisation
    model.load_state_dict({name: tensor.to(own[name].dtype) for name, tensor in state.items()}, strict=True)
    if head:
        return (f"starting from the weights in {path}, except the classifier ({', '.join(head)}), which starts "
                f"fresh: the file was trained on {file_classes} classes, this data has {num_classes}")
    return f"starting from the weights in {path}"
