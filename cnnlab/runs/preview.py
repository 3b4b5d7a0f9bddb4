"""Augmentation preview: a few training images, each shown as the model sees it at evaluation and then
as N independent draws of the training augmentation.

The lecture's point made visible: augmentation is applied on the fly, per read, so the same file looks
different every time the network sees it. Each panel is produced exactly as training produces it: the
training dataset's per-image transform (training.setup.make_datasets) with a per-read seed like
EpochSampler's, then the batch part on the device (training.forward.InputPipeline), so what you see is
what training uses. At the end of a run the preview reads the run's own dataset, so its images come
from the decoded-image cache, not from the original files.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import plots
from cnnlab.config import TrainConfig
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.transforms import Preprocessing, denormalize
from cnnlab.errors import CnnlabError
from cnnlab.training.forward import InputPipeline
from cnnlab.training.record import AUGMENT_PREVIEW
from cnnlab.training.setup import environment, find_splits, input_pipeline, prepare_data, preprocessing_of


def pick_images(labels: list[int], images: int, seed: int) -> list[int]:
    """Indices of `images` samples, one class after another (round robin), shuffled by seed within each class."""
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index in torch.randperm(len(labels), generator=generator).tolist():
        by_class.setdefault(labels[index], []).append(index)
    queues = [by_class[label] for label in sorted(by_class)]
    chosen: list[int] = []
    while len(chosen) < min(images, len(labels)):
        for queue in queues:
            if queue and len(chosen) < images:
                chosen.append(queue.pop(0))
    return chosen


@dataclass
class PreviewParts:
    """What the preview reads: the training dataset (per-image transform, cache), the batch pipeline, classes."""

    dataset: ImageDataset
    pipeline: InputPipeline
    classes: list[str]
    unreadable: frozenset[int] = frozenset()
    """Dataset indices already known to be unreadable (left out of the preview)."""


def preview_parts(config: TrainConfig) -> PreviewParts:
    """The training dataset and batch pipeline built from `config` by training's own stages; a cache that exists
    is read, none is built (a preview looks at a few images). float32: the preview shows pixels."""
    env = environment(dataclasses.replace(config, precision="fp32"), join=False)
    splits = find_splits(config).only("train")  # the cache is opened for, and the dataset read from, the same files
    prepared = prepare_data(config, splits, verbose=False, build_cache=False)
    return PreviewParts(prepared.datasets["train"], input_pipeline(config, env.device, env.precision), splits.classes)


def preview_tensors(config: TrainConfig, n: int = 8, images: int = 4, parts: PreviewParts | None = None
                    ) -> tuple[torch.Tensor, list[str]]:
    """(images, 1 + n, 3, S, S) float in 0..1: per row the eval view, then n training reads; and each
    row's class name. `parts`: the run's own dataset and pipeline (else built from `config`)."""
    if n < 1 or images < 1:
        raise CnnlabError(f"augment preview needs n >= 1 and images >= 1; got n={n}, images={images}")
    parts = parts or preview_parts(config)
    dataset, pipeline = parts.dataset, parts.pipeline
    view = Preprocessing.for_size(config.img_size).eval_transform()
    # per-read seeds drawn like EpochSampler's: one 62-bit seed for every augmented panel
    generator = torch.Generator().manual_seed(config.seed)
    seeds = torch.randint(0, 2**62, (images, n), generator=generator)
    rows, names = [], []
    readable = [i for i in range(len(dataset)) if i not in parts.unreadable]
    chosen = pick_images([dataset.samples[i].label for i in readable], images, config.seed)
    record = preprocessing_of(config)
    if record.bags:  # a bag run's dataset reads whole images; the step augments each kept tile on the device
        view = record.one_input
    for row, index in enumerate(readable[k] for k in chosen):
        crops = []
        for column in range(n):
            if record.bags:  # one tile (the central one), augmented with each read's seed
                crops.append(view(dataset.load(index)))
                continue
            item = dataset[(index, int(seeds[row, column]))]  # (uint8 image, label, index, seed), or None
            if item is None:
                raise CnnlabError(f"cannot read {dataset.samples[index].path}; run `cnnlab data check`")
            crops.append(item[0])
        with torch.no_grad():
            augmented = pipeline(torch.stack(crops), seeds[row], train=True).float().cpu()  # (n, 3, S, S)
            original = pipeline(view(dataset.load(index))[None]).float().cpu()               # (1, 3, S, S)
        rows.append(denormalize(torch.cat([original, augmented]), pipeline.mean, pipeline.std))
        names.append(parts.classes[dataset.samples[index].label])
    return torch.stack(rows), names


def write_preview(config: TrainConfig, out: Path, n: int = 8, images: int = 4,
                  parts: PreviewParts | None = None) -> Path:
    """The grid as a PNG: rows are training images, the first column the eval view, then n augmented reads."""
    batch, names = preview_tensors(config, n, images, parts)
    rows, columns = batch.shape[:2]
    pictures = batch.flatten(0, 1).permute(0, 2, 3, 1)                       # (rows*columns, S, S, 3) in 0..1
    pictures = pictures.reshape(rows, columns, *pictures.shape[1:]).numpy()  # (rows, columns, S, S, 3)
    what = "identical: augment='none'" if config.augment == "none" else \
        f"augment='{config.augment}' on the {config.augment_on}: random, drawn anew on every read"
    return plots.augment_grid(pictures, names, ["original"] + [f"read {k}" for k in range(1, columns)], out,
                              suptitle=f"{rows} training images at {config.img_size}px, then {columns - 1} "
                                       f"training reads of each\n({what})")


def write_run_preview(run_dir: str | Path, config: TrainConfig, parts: PreviewParts | None = None) -> Path | None:
    """RUN/augment_preview.png (for the report), from the run's own dataset when `parts` are given; a failure
    only warns."""
    try:
        return write_preview(config, Path(run_dir) / AUGMENT_PREVIEW, parts=parts)
    except Exception as error:  # noqa: BLE001 - a preview must never fail a finished training run
        print(f"warning: could not write the augmentation preview: {error}", file=sys.stderr)
        return None
