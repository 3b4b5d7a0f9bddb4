"""Augmentation preview: a few training images, each shown as the model sees it at evaluation and then
as N independent draws of the training transform.

The lecture's point made visible: augmentation is applied on the fly, per read, so the same file looks
different every time the network sees it. Each panel is produced exactly as training produces it
(the training dataset of make_datasets, read with a per-read seed like EpochSampler's), so what you see
is what training uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cnnlab.config import TrainConfig
from cnnlab.data import find_samples
from cnnlab.errors import CnnlabError
from cnnlab.transforms import denormalize, eval_transform


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


def preview_tensors(config: TrainConfig, n: int = 8, images: int = 4) -> tuple[torch.Tensor, list[str]]:
    """(images, 1 + n, 3, S, S) normalised tensors: per row the eval view, then n training reads;
    and each row's class name."""
    from cnnlab.train import make_datasets  # fit's own dataset builder: the same transforms as training

    if n < 1 or images < 1:
        raise CnnlabError(f"augment preview needs n >= 1 and images >= 1; got n={n}, images={images}")
    splits = find_samples(config.data, val_fraction=config.val_fraction, seed=config.seed)
    dataset = make_datasets(splits, config)["train"]
    view = eval_transform(config.img_size)
    # per-read seeds drawn like EpochSampler's: one 62-bit seed for every augmented panel
    generator = torch.Generator().manual_seed(config.seed)
    seeds = torch.randint(0, 2**62, (images, n), generator=generator)
    rows, names = [], []
    for row, index in enumerate(pick_images([s.label for s in dataset.samples], images, config.seed)):
        panels = [view(dataset.load(index))]                      # (3, S, S) each
        for column in range(n):
            item = dataset[(index, int(seeds[row, column]))]      # (image, label, index), or None if unreadable
            if item is None:
                raise CnnlabError(f"cannot read {dataset.samples[index].path}; run `cnnlab data check`")
            panels.append(item[0])
        rows.append(torch.stack(panels))
        names.append(splits.classes[dataset.samples[index].label])
    return torch.stack(rows), names


def _write(config: TrainConfig, n: int, images: int, out: Path) -> Path:
    from cnnlab import plots

    batch, names = preview_tensors(config, n, images)
    rows, columns = batch.shape[:2]
    pictures = denormalize(batch.flatten(0, 1)).permute(0, 2, 3, 1)        # (rows*columns, S, S, 3) in 0..1
    pictures = pictures.reshape(rows, columns, *pictures.shape[1:]).numpy()  # (rows, columns, S, S, 3)
    what = "identical: augment='none'" if config.augment == "none" else \
        f"augment='{config.augment}': random, drawn anew on every read"
    return plots.augment_grid(pictures, names, ["original"] + [f"read {k}" for k in range(1, columns)], out,
                              suptitle=f"{rows} training images at {config.img_size}px, then {columns - 1} "
                                       f"training reads of each\n({what})")


def augment_preview(data: str, augment: str = "default", n: int = 8, images: int = 4, img_size: int = 128,
                    seed: int = 0, out: str | Path | None = None) -> Path:
    """Write a grid: rows are training images, the first column the eval view, then n augmented reads."""
    config = TrainConfig(data=str(data), augment=augment, img_size=img_size, seed=seed)
    return _write(config, n, images, Path(out) if out is not None else Path("augment_preview.png"))


def write_run_preview(run_dir: str | Path, config: TrainConfig) -> Path | None:
    """RUN/augment_preview.png for a run's config (for the report); a failure only warns."""
    try:
        return _write(config, 8, 4, Path(run_dir) / "augment_preview.png")
    except Exception as error:  # noqa: BLE001 - a preview must never fail a finished training run
        print(f"warning: could not write the augmentation preview: {error}", file=sys.stderr)
        return None
