"""`cnnlab augment-preview --data D`: training images as evaluated and as N random augmented reads
(cnnlab.runs.preview draws them exactly as training does): augmentation happens on the fly, per read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from cnnlab.config import Help, TrainConfig
from cnnlab.runs.preview import write_preview
from cnnlab.training.record import AUGMENT_PREVIEW


def default_preview_path(data: str) -> Path:
    """runs/augment_preview/<data folder name>.png: kept with the runs, not dropped into the current folder."""
    return Path("runs").absolute() / "augment_preview" / f"{Path(data).resolve().name}.png"


def augment_preview(data: str, n: Annotated[int, Help("Augmented reads per image (columns after the original).")] = 8,
                    images: Annotated[int, Help("Training images to show (rows).")] = 4,
                    out: Annotated[str | Path | None, Help("Where to write the grid (default: "
                                                           "runs/augment_preview/<data>.png).")] = None,
                    run: Annotated[str | None, Help("Run folder: write RUN/augment_preview.png (shown in the "
                                                    "report).")] = None,
                    **options) -> Path:
    """Show training images as evaluated and as N random augmented reads: augmentation happens on the fly.

    Writes a grid: rows are training images, the first column the eval view, then n augmented reads. `options` are
    TrainConfig fields (augment, augment_on, img_size, seed, ...; its defaults, as `train` has them). Returns the
    path written: RUN/augment_preview.png with `run`, else `out`, else runs/augment_preview/<data folder>.png."""
    config = TrainConfig(data=str(data), **options)
    path = Path(run) / AUGMENT_PREVIEW if run else Path(out) if out else default_preview_path(data)
    return write_preview(config, path, n, images)


def show(path: Path) -> None:
    """The file written."""
    print(f"wrote {path}", flush=True)
