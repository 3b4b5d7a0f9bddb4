"""`cnnlab augment-preview --data D`: training images as evaluated and as N random augmented reads
(cnnlab.runs.preview draws them exactly as training does): augmentation happens on the fly, per read."""

from __future__ import annotations

from pathlib import Path

from cnnlab.config import TrainConfig
from cnnlab.runs.preview import write_preview


def default_preview_path(data: str) -> Path:
    """runs/augment_preview/<data folder name>.png: kept with the runs, not dropped into the current folder."""
    return Path("runs").absolute() / "augment_preview" / f"{Path(data).resolve().name}.png"


def augment_preview(data: str, n: int = 8, images: int = 4, out: str | Path | None = None, **options) -> Path:
    """Write a grid: rows are training images, the first column the eval view, then n augmented reads.
    `options` are TrainConfig fields (augment, augment_on, img_size, seed, ...; its defaults, as `train` has them).
    `out` None: runs/augment_preview/<data folder>.png. Returns the path written."""
    config = TrainConfig(data=str(data), **options)
    return write_preview(config, Path(out) if out else default_preview_path(data), n, images)
