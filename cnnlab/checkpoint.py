"""Weights on disk: safetensors (data, not code), written atomically so a crash never destroys the
previous file; foreign .pt/.pth state dicts read only with weights_only=True."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cnnlab.errors import CnnlabError

TMP_PREFIX = ".tmp-"  # temporary files next to their target; stale ones are removed on start
# safetensors (0.8) itself writes through a Rust NamedTempFile, ".tmp" + 6 random characters, in the
# same folder and renames it onto our temporary; a kill at that moment leaves one of those behind.
_SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write via a temporary file in the same folder, fsync, then os.replace onto `path`.

    The target is either the old complete file or the new complete file, never a half-written one.
    If writing fails (disk full, read-only), the old file is kept and a CnnlabError says so.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with _suppress():
            os.unlink(tmp)
        # safetensors reports a failed write of its own (disk full, EFBIG) as a SafetensorError
        if isinstance(error, (OSError, SafetensorError)):
            kept = " (the previous version is kept)" if path.exists() else ""
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise CnnlabError(f"could not write {path}: {reason}{kept}; "
                              "free some disk space or choose another --out folder") from None
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # make the rename itself durable
    with _suppress():
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete temporary files left by an interrupted atomic_write; returns their names."""
    removed = []
    for entry in Path(folder).iterdir():
        if not (entry.name.startswith(TMP_PREFIX) or _SAFETENSORS_TMP.fullmatch(entry.name)):
            continue
        with _suppress():
            entry.unlink()
            removed.append(entry.name)
    return removed


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
