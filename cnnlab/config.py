"""Typed, validated option groups. Defaults live here and nowhere else: the CLI builds `train`'s flags
from TrainConfig's fields, their defaults and their docstrings (field_docs), so the two cannot drift."""

from __future__ import annotations

import ast
import dataclasses
import re
import difflib
import functools
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError


def flag(field_name: str) -> str:
    """The command-line flag of an option: img_size -> --img-size (messages name what the user types)."""
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True)
class Help:
    """A parameter's command-line help, written once next to the parameter of the library function:
    `top_k: Annotated[int, Help("Classes to show per image.")] = 3`. The CLI reads it (cnnlab.cli); Python ignores
    it. `flag`: the flag when it is not the parameter's name (`class_name` -> `--class`)."""

    text: str
    flag: str | None = None


# Help of parameters that many commands share, by name: written once, here.
SHARED_HELP = {
    "run_dir": Help("Run folder written by `cnnlab train` (predict: or a model.onnx written by `cnnlab export`)."),
    "which": Help("best or last weights (best: the lowest validation loss)."),
    "inputs": Help("Image files or folders (their images, recursively)."),
    "images": Help("Image files or folders (their images, recursively)."),
    "image": Help("An image file."),
    "cache_dir": Help("Cache folder (default: CNNLAB_CACHE or the user cache folder)."),
    "tta": Help("Average each image's prediction with its mirror image's."),
    "tiled": Help("Score whole images by a sliding window of the run's input size (a run trained on tiles always "
                  "does)."),
    "scale": Help("Pixel scale of the sliding window (default: the run's; 1 = the file's own pixels)."),
    "batch_size": Help("Images (or windows of a sliding window) per forward pass."),
    "max_bad": Help("Share of the images that may be unreadable before this is an error (default: the run's "
                    "--max-bad)."),
    "device": Help("auto (CUDA if available, else CPU), cpu, cuda or cuda:N."),
    "workers": Help("Decoding processes (default: from the core count)."),
}
# Help of a run's data folder where a command reads it again
RUN_DATA_HELP = Help("Image folder or label file (default: the one the run was trained on; give its new place if it "
                     "moved).")


def check_choice(field_name: str, value: Any, allowed: tuple) -> None:
    """Raise a CnnlabError naming the flag, the bad value, the allowed values and a close match."""
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise CnnlabError(f"{flag(field_name)} {value!r} is not allowed{hint}; choose one of: "
                      + ", ".join(str(a) for a in allowed))


def check_range(field_name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False) -> None:
    """Raise a CnnlabError if value is outside [low, high] (or (low, high] with low_open)."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
                 f"{high if high is not None else 'inf'}]"
        raise CnnlabError(f"{flag(field_name)} {value!r} is out of range; it must be in {bounds}")


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}


def parse_duration(text: str | float | int) -> float:
    """'90s', '10m', '1.5h', '2h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip().lower())
        if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", text.strip().lower()) \
                or any(unit not in _UNITS and unit != "" for _, unit in parts):
            raise CnnlabError(f"--time {text!r} is not a duration; write e.g. 90s, 10m, 2h or 1h30m")
        seconds = sum(float(number) * _UNITS.get(unit or "s", 1) for number, unit in parts)
    if seconds <= 0:
        raise CnnlabError(f"--time {text!r}: the budget must be more than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """90 -> '1m30s', 7200 -> '2h'."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v) or "0s"


AUGMENT_PRESETS = ("default", "none")
AUGMENT_ON = ("workers", "device")
BALANCE = ("auto", "weights", "sampler", "off")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "disk", "ram", "off")
AGGREGATES = ("mean", "max", "attention")
TRACKERS = ("tensorboard", "mlflow")  # --log: where a run is mirrored (cnnlab.training.tracking)
BATCH = 32  # images (or tiles) per step by default
# Bag runs (--aggregate attention, cnnlab.training.bags). Measured: benchmarks/results/bag_step.md (one step of
# resnet9 on 256 px tiles, 2 images, 2 CPU cores).
# M, the tiles of each image a step learns from: Bergner et al. keep 10 of 192 patches (traffic signs) and 100 of
# 900 (megapixel MNIST), room for every patch that can decide the class and more, since a deciding tile left out of
# the top M gets no gradient that step. The sparse kind puts at most 8 class objects in an image (one on a tile
# border shows in two tiles); 16 holds them with room to spare. The training process's peak resident memory was
# 967 / 1214 / 1450 MB for M = 8 / 16 / 32, and 1108 / 1214 / 1180 MB for 1024 / 2048 / 4096 px images at M = 16
# (flat: 50 to 578 tiles scored; the rest is torch, the model and the two decoded images).
BAG_TILES = 16
# Images (bags) per step: 2 x BAG_TILES = 32 tiles with gradients, the activations of a tiled run's BATCH of tiles.
BAG_BATCH = 2
# Epochs whose steps draw M tiles at random instead of the top M. The attention starts untrained: its top M are
# whatever an arbitrary function of the pixels ranks first, the same kind of tile step after step, and the
# attention can learn only among the tiles it is shown. One epoch of random draws shows the encoder and the
# attention every kind of tile first (each image's M of n per epoch), and costs no scoring pass. (IPS's reference
# code selects from the first step and ramps its learning rate up over 10 of 150 epochs; cnnlab's schedules warm
# the rate up as well.)
BAG_WARMUP = 1
# Fine-tuning pretrained weights (cnnlab.training.transfer; the whole recipe measured once in
# benchmarks/results/transfer_clothing.md, its parts not yet apart)
TRANSFER_HEAD_VIEWS = 3  # the evaluation view and two augmented ones
TRANSFER_BACKBONE_LR = 0.1  # the backbone's learning rate as a share of the classifier's


@dataclass
class TrainConfig:
    """Every option of a training run; written resolved to the run folder as config.yaml."""

    data: str = ""
    """Image folder (ImageFolder layout, with or without train/val/test split folders), or a label file: a CSV of path,label[,split] (or a folder holding labels.csv), relative paths from its folder."""
    model: str = "resnet9"
    """Model name from the registry (`cnnlab models` lists them); resnet9 is the fast default for training from scratch."""
    img_size: int = 128
    """Side of the square training crop, in pixels (with --tile: the tile's side)."""
    tile: int | None = None
    """Train on random tiles of this side cut at --scale from each image, and predict by sliding a window of it over the whole image (for large images whose detail a resize would lose); None: the whole image resized to --img-size."""
    scale: float = 1.0
    """With --tile: the pixel scale the tiles are cut at (1.0 = the file's own pixels, 0.5 = half)."""
    tile_overlap: float | None = None
    """With --tile: the share of a tile that overlaps its neighbour when sliding over a whole image; None: 0.5, or 0 for --aggregate attention (a bag is the image's grid of tiles, each pixel in one tile)."""
    aggregate: str = "mean"
    """With --tile: how tile logits become the image's: mean, max (a class present anywhere in the image), or attention: train on whole images, each a bag of tiles with the image's label, pooled by learned attention (multiple-instance learning with Iterative Patch Selection; for labels true of the image, not of every tile)."""
    bag_tiles: int = BAG_TILES
    """With --aggregate attention: the tiles of each image a training step learns from (M): a pass without gradients scores every tile of the image, the M with the highest attention are encoded again with gradients and pooled; memory grows with M and --batch-size, never with the image's size."""
    score_batch: int | None = None
    """With --aggregate attention: tiles per forward pass when scoring a whole image (memory grows with it, not with the image); None: as many as the sliding window batches (16 of 256 px)."""
    bag_warmup: int = BAG_WARMUP
    """With --aggregate attention: epochs at the start in which each step learns from --bag-tiles tiles drawn at random instead of the top-scoring ones (the attention is untrained then), without the scoring pass."""
    epochs: int = 10
    """Maximum number of passes over the training split."""
    time: str | None = None
    """Train for this wall-clock time instead of --epochs (e.g. 90s, 10m, 2h): the steps that fit are planned from the measured speed, so the learning-rate schedule still ends at the budget."""
    batch_size: int | str | None = None
    """Images per optimisation step, or auto: the largest power of two whose measured training step fits 80% of the free memory (at most 256 on a CPU, where larger batches are no faster, and at least 8 steps an epoch); None: 32, or with --aggregate attention 2 images (bags) of --bag-tiles tiles each."""
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
    dropout: float = 0.2
    """Dropout probability before the classifier (the lecture's regulariser; label smoothing, the weight average and augmentation regularise too, so it need not be 0.5)."""
    augment: str = "default"
    """Augmentation preset: default (the lecture's pipeline) or none."""
    augment_on: str = "device"
    """Where the preset's flip, rotation and colour jitter run: workers (per image, torchvision) or device (per batch, different parameters per image)."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing: the target is 90% the true class and 10% spread over all, so the network is not pushed to infinite confidence (better calibrated, generalises better)."""
    ema: bool = True
    """Evaluate and save an exponential moving average of the weights (over about the last 10% of the steps) instead of the last step's weights."""
    progressive: bool | None = None
    """Progressive resizing: train on smaller images early (from half the size) and at full size over the last quarter of the epochs; validation is always at full size. Default: on, except for tiled runs (there it would crop the tiles, and a quarter of a tile often holds none of what labels it)."""
    mixup: float = 0.0
    """MixUp alpha (0: off): blend pairs of images and their labels."""
    cutmix: float = 0.0
    """CutMix alpha (0: off): paste a patch of one image into another, labels mixed by area; with MixUp, one of the two per batch."""
    balance: str = "auto"
    """Class imbalance: weights (loss weighted by inverse class frequency), sampler (draw classes equally often), off, or auto (weights when the largest class has >= 3x the images of the smallest)."""
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
    """Start from ImageNet weights: efficientnet_lite0's come installed with cnnlab (offline, checksum verified); torchvision models' from torch's hub cache ($TORCH_HOME/hub/checkpoints), else downloaded once."""
    weights: str | None = None
    """Start from these weights: a run's .safetensors, or a .pt/.pth state dict (torchvision's official files included) read as tensors only; a classifier for another number of classes starts fresh."""
    freeze: int = 0
    """Train only the classifier for the first N epochs, the rest of the network frozen (N >= epochs: a linear probe); for fine-tuning pretrained weights."""
    head_views: int | None = None
    """Before the epochs, fit the classifier alone on the frozen network's features of this many views of each training image (the evaluation view, then augmented ones), each computed once and kept: a linear probe in seconds, so fine-tuning starts from a classifier that fits (cnnlab.training.transfer); 0: off; None: 3 with --pretrained (with --time, fewer when they would take more than half of it), else 0."""
    backbone_lr: float | None = None
    """Learning rate of everything but the classifier, as a share of --lr; None: 0.1 with --pretrained (large steps would wear down the ImageNet features the run starts from), else 1."""
    freeze_bn: bool | None = None
    """Hold BatchNorm in eval mode while training: it normalises with the statistics the starting weights came with and keeps them (its scale and shift still train); None: on with --pretrained (small batches of one folder's crops estimate them worse than ImageNet did), else off."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the model factory (e.g. widths for simple_cnn)."""
    out: str | None = None
    """Run folder; None makes runs/<model>-<timestamp>."""
    log: list[str] = field(default_factory=list)
    """Also log the run to TensorBoard (event files in RUN/tensorboard) or MLflow (repeatable: --log tensorboard --log mlflow): the options, every epoch's metrics, the verdict, the evaluation and the figures (cnnlab.training.tracking)."""
    mlflow_uri: str | None = None
    """With --log mlflow: the tracking store or server; None: $MLFLOW_TRACKING_URI if set, else a local SQLite store beside the run folder (RUN/../mlflow.db), no server needed."""

    def __post_init__(self) -> None:
        check_choice("augment", self.augment, AUGMENT_PRESETS)
        check_choice("augment_on", self.augment_on, AUGMENT_ON)
        check_choice("balance", self.balance, BALANCE)
        check_range("mixup", self.mixup, 0.0, 10.0)
        check_range("cutmix", self.cutmix, 0.0, 10.0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("cache", self.cache, CACHE_MODES)
        check_range("img_size", self.img_size, 8, 8192)
        check_range("epochs", self.epochs, 1)
        check_choice("aggregate", self.aggregate, AGGREGATES)
        if self.batch_size is None:
            self.batch_size = BAG_BATCH if self.aggregate == "attention" else BATCH
        if isinstance(self.batch_size, str) and self.batch_size != "auto":
            try:
                self.batch_size = int(self.batch_size)
            except ValueError:
                raise CnnlabError(f"--batch-size {self.batch_size!r} is not a whole number; give e.g. 32, or 'auto' "
                                  "for the largest batch that fits in memory") from None
        if self.batch_size != "auto":
            check_range("batch_size", self.batch_size, 1)
        check_range("dropout", self.dropout, 0.0, 1.0)
        check_range("val_fraction", self.val_fraction, 0.0, 0.9, low_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_range("max_bad", self.max_bad, 0.0, 1.0)
        check_range("max_pixels", self.max_pixels, 1)
        check_range("freeze", self.freeze, 0)
        check_range("scale", self.scale, 0.0, 4.0, low_open=True)
        if isinstance(self.log, str):  # a YAML file or a caller giving one name
            self.log = [self.log]
        self.log = list(self.log)
        for name in self.log:
            check_choice("log", name, TRACKERS)
        if self.tile_overlap is None:
            self.tile_overlap = 0.0 if self.aggregate == "attention" else 0.5
        check_range("tile_overlap", self.tile_overlap, 0.0, 0.9)
        if self.aggregate == "attention":
            if self.tile is None:
                raise CnnlabError("--aggregate attention treats each image as a bag of tiles: give their size with "
                                  "--tile (e.g. --tile 256) and the pixel scale with --scale")
            check_range("bag_tiles", self.bag_tiles, 1, 4096)
            if self.score_batch is not None:
                check_range("score_batch", self.score_batch, 1)
            check_range("bag_warmup", self.bag_warmup, 0)
            for name in ("mixup", "cutmix"):
                if getattr(self, name):
                    raise CnnlabError(f"{flag(name)} blends pairs of training images, and --aggregate attention "
                                      f"trains on bags of tiles; leave {flag(name)} out (or use --aggregate mean)")
            if self.progressive:
                raise CnnlabError("--progressive shrinks training images, and --aggregate attention trains on "
                                  "whole tiles; leave --progressive out")
        if self.tile is not None:
            check_range("tile", self.tile, 8, 8192)
            self.img_size = self.tile  # the network sees tiles: one side for both
        if self.head_views is not None:
            check_range("head_views", self.head_views, 0, 64)
            if self.head_views and self.tile:
                raise CnnlabError("--head-views fits the classifier on whole images' features; tiled runs (--tile) "
                                  "train it with the rest: give --head-views 0, or --freeze N for a linear probe")
        if self.backbone_lr is not None:
            check_range("backbone_lr", self.backbone_lr, 0.0, 1.0)
        self.resolve_transfer()
        if self.progressive is None:
            self.progressive = not self.tile
        if self.time is not None:
            parse_duration(self.time)  # a clear error now, not after the data is scanned
        if self.patience is not None:
            check_range("patience", self.patience, 1)
        if self.workers is not None:
            check_range("workers", self.workers, 0)
        if isinstance(self.lr, str) and self.lr != "auto":
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise CnnlabError(f"--lr {self.lr!r} is not a number; give e.g. 0.003, or 'auto'") from None
        if isinstance(self.lr, float):
            check_range("lr", self.lr, 0.0, 10.0, low_open=True)

    def resolve_transfer(self) -> None:
        """The transfer options left at None, from whether the run starts from ImageNet weights (see their fields)."""
        if self.head_views is None:
            self.head_views = TRANSFER_HEAD_VIEWS if self.pretrained and not self.tile else 0
        if self.backbone_lr is None:
            self.backbone_lr = TRANSFER_BACKBONE_LR if self.pretrained else 1.0
        if self.freeze_bn is None:
            self.freeze_bn = bool(self.pretrained)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML/JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Inverse of to_dict; unknown keys (from newer versions) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def field_docs(cls: type) -> dict[str, str]:
    """{field name: its docstring} of a dataclass whose fields are documented by a string right after them
    (the convention here): read from the source, so the CLI's help is the config's own text."""
    return _field_docs(cls)


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for statement, following in zip(body, body[1:]):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def config_from_file(path: str | os.PathLike) -> dict[str, Any]:
    """Options from a YAML file (e.g. a run's own config.yaml) as {field: value}; unknown keys are an error
    naming the closest field, so a typo is not silently ignored."""
    from cnnlab.files import read_yaml

    values = read_yaml(path)
    if not isinstance(values, dict):
        raise CnnlabError(f"--config {path}: expected a mapping of option: value, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise CnnlabError(f"--config {path}: unknown option '{key}'{hint}; options are the fields of "
                              "`cnnlab train --help`, with underscores")
    return values


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
