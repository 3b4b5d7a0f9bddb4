"""Typed, validated option groups. Defaults live here and nowhere else (the CLI reads them)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError


def check_choice(field_name: str, value: Any, allowed: tuple) -> None:
    """Raise a CnnlabError naming the field, the bad value, the allowed values and a close match."""
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise CnnlabError(f"{field_name}={value!r} is not allowed{hint}; choose one of: "
                      + ", ".join(str(a) for a in allowed))


def check_range(field_name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False) -> None:
    """Raise a CnnlabError if value is outside [low, high] (or (low, high] with low_open)."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
                 f"{high if high is not None else 'inf'}]"
        raise CnnlabError(f"{field_name}={value!r} is out of range; it must be in {bounds}")


AUGMENT_PRESETS = ("default", "none")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "disk", "ram", "off")


@dataclass
class TrainConfig:
    """Every option of a training run; written resolved to the run folder as config.yaml."""

    data: str = ""
    """Image folder: ImageFolder layout, with or without train/val/test split folders."""
    model: str = "simple_cnn"
    """Model name from the registry (`cnnlab models` lists them)."""
    img_size: int = 128
    """Side of the square training crop, in pixels."""
    epochs: int = 10
    """Maximum number of passes over the training split."""
    batch_size: int = 32
    """Images per optimisation step."""
    lr: float | str | None = None
    """Peak learning rate; None picks the optimizer's default, 'auto' runs the LR finder first."""
    optimizer: str = "adamw"
    """adamw or sgd (with Nesterov momentum 0.9)."""
    weight_decay: float = 0.05
    """Decoupled weight decay (AdamW) or L2 (SGD); not applied to norms and biases."""
    schedule: str = "onecycle"
    """Learning-rate schedule per step: onecycle, cosine (with warm-up) or constant."""
    warmup_epochs: float = 1.0
    """Warm-up length for the cosine schedule (onecycle warms up for 25% of the steps)."""
    dropout: float = 0.5
    """Dropout probability before the classifier (the lecture's regulariser)."""
    augment: str = "default"
    """Augmentation preset: default (the lecture's pipeline) or none."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    patience: int | None = None
    """Stop after this many epochs without a better validation loss; None never stops early."""
    val_fraction: float = 0.2
    """Share of each class held out for validation when the folder has no split folders."""
    seed: int = 0
    """Seed for the split, weight initialisation, shuffling and augmentation."""
    device: str = "auto"
    """auto (CUDA if available, else CPU), cpu, cuda or cuda:N."""
    workers: int | None = None
    """DataLoader worker processes; None chooses from the core count."""
    precision: str = "auto"
    """auto (bf16 where the hardware runs it fast, else fp32), fp32, bf16 or fp16."""
    channels_last: bool | None = None
    """Use the channels_last memory format; None decides from the device and precision."""
    compile: bool = False
    """Wrap the model in torch.compile (falls back with a warning if it fails)."""
    cache: str = "auto"
    """Decoded-image cache: auto, disk, ram or off."""
    cache_dir: str | None = None
    """Where the disk cache lives; None uses the user's cache directory."""
    max_pixels: int = 200_000_000
    """Refuse images with more pixels than this (checked from the header, before decoding)."""
    max_bad: float = 0.05
    """Stop if more than this share of a split is unreadable."""
    pretrained: bool = False
    """Start torchvision models from their ImageNet weights (needs a network download)."""
    weights: str | None = None
    """Start from these weights (.safetensors, or a .pt/.pth state dict read with weights_only)."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the model factory (e.g. widths for simple_cnn)."""
    out: str | None = None
    """Run folder; None makes runs/<model>-<timestamp>."""

    def __post_init__(self) -> None:
        check_choice("augment", self.augment, AUGMENT_PRESETS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("cache", self.cache, CACHE_MODES)
        check_range("img_size", self.img_size, 8, 8192)
        check_range("epochs", self.epochs, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("dropout", self.dropout, 0.0, 1.0)
        check_range("val_fraction", self.val_fraction, 0.0, 0.9, low_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_range("max_bad", self.max_bad, 0.0, 1.0)
        check_range("max_pixels", self.max_pixels, 1)
        if self.patience is not None:
            check_range("patience", self.patience, 1)
        if self.workers is not None:
            check_range("workers", self.workers, 0)
        if isinstance(self.lr, str) and self.lr != "auto":
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise CnnlabError(f"lr={self.lr!r} is not a number; give e.g. 0.003, or 'auto'") from None
        if isinstance(self.lr, float):
            check_range("lr", self.lr, 0.0, 10.0, low_open=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Inverse of to_dict; unknown keys (from newer versions) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def default(cls: type, name: str) -> Any:
    """The default of one dataclass field, so the CLI shows the same defaults as the API."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            if item.default is not dataclasses.MISSING:
                return item.default
            return item.default_factory()  # type: ignore[misc]
    raise KeyError(name)


def resolve_out(out: str | None, model: str) -> Path:
    """Run folder path: the given one, or runs/<model>-<YYYYmmdd-HHMMSS>."""
    if out:
        return Path(out)
    import time

    return Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
