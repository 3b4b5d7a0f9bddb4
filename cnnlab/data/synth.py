"""The built-in datasets, one geometric shape class per image on a cluttered, textured background.

    kind "shapes"   one large shape per image (a quarter to half of the side): the default, for learning
    kind "objects"  90-180 small copies of the class's shape (a few dozen pixels each, about 1/64 of
                    the side) scattered over a large, cluttered image (use >= 3000 px): the class is decided
                    by detail that shrinking the image to 224 px erases, so whole-image training stays near
                    chance while tiles at half the image's scale see it (cnnlab train --tile 256 --scale 0.5)
    kind "sparse"   3-8 small copies of the class's shape among same-size distractors on a very large image
                    (4000 px by default, up to 20,000 and more): most tiles hold no class object, so a tile
                    labelled with its image's class is mostly wrong (cnnlab.data.sparse); drawn tile by tile

Files are JPEGs, or with file_format "tiff" tiled JPEG-compressed TIFFs (256 px tiles, a pyramid of halved
levels down to 1024 px, BigTIFF past 2 GB of pixels), written a tile at a time: the sparse kind never holds a
whole image, whatever its size.

Nothing can be downloaded, so this is the default dataset. It is made to need spatial features:
the shape has a random position, scale, rotation and colour, so an MLP on raw pixels does poorly,
while a CNN learns it because the shape is solid and much lighter than the background under it,
and the clutter is thin or small. Measured by hand (6 classes, 480 train images at 128 px, a
4-stage CNN, AdamW + one-cycle, flips and right-angle rotations): 0.73 val accuracy after 10
epochs and still rising (0.875 after 20 with an earlier background); an MLP stays near 0.3.

Every image's random numbers come from `np.random.default_rng([seed, class_index, image_index])`,
so the bytes of a file depend only on the arguments, never on generation order or worker count.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image, ImageDraw

from cnnlab.config import Help
from cnnlab.data import sparse
from cnnlab.data.drawing import (SHAPE_NAMES, background_small, lighter_colour, mask_image, random_colour,
                                 shape_mask)  # noqa: F401 - shape_mask: part of this module's API (tests, docs)
from cnnlab.errors import CnnlabError
from cnnlab.signals import leave_signals_to_parent
from cnnlab.data.images import DEFAULT_MAX_PIXELS, save_image, save_tiled_tiff

# Bump when the drawing code changes, so that an old folder is not mistaken for the new dataset.
GENERATOR_VERSION = 2
FORMATS = ("jpeg", "tiff")
SUFFIXES = {"jpeg": ".jpg", "tiff": ".tif"}
# A JPEG is encoded from the whole image in memory (side^2 x 3 bytes): 200 MB at 8192 px. Larger sparse images
# are written as tiled TIFF, one tile at a time.
JPEG_MAX_SIZE = 8192
# TIFF pyramid: levels halved while they keep at least this side (a 4000 px image gets a 2000 px level; one of
# 20,000 px levels of 10,000, 5,000, 2,500 and 1,250): a read at scale 0.5 or 0.25 decodes a level of that size
PYRAMID_MIN_SIDE = 1024
MIN_SIZE = 32
META_NAME = "synth.json"

# Shape extent (diameter of the circle around it) as a fraction of the image side.
MIN_EXTENT, MAX_EXTENT = 0.25, 0.55
# Free border around the shape's outer circle, as a fraction of the side.
MARGIN = 0.05


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------

def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Dark-to-mid, muted colour field + faint mid-frequency texture: RGB (size, size)."""
    return Image.fromarray(background_small(rng, size)).resize((size, size), Image.BILINEAR)


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, lines: int,
             dots: int, blobs: int) -> None:
    """Thin lines, dots and small ellipses: all far thinner or smaller than the smallest shape."""
    thick = max(1, size // 340)  # 1-3 px at 1024: below one pixel once downscaled to 128
    for _ in range(lines):
        start = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4) * size
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        draw.line([tuple(start), tuple(end)], fill=random_colour(rng),
                  width=int(rng.integers(1, thick + 1)))
    for _ in range(dots):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.5, max(1.0, size / 200))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=random_colour(rng))
    for _ in range(blobs):
        # radius <= 3% of the side, against >= 12.5% for the smallest shape's outer circle
        x, y = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.008, 0.03, 2) * size
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=random_colour(rng))


def render(name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image of shape `name`: ((size, size, 3) uint8 pixels, (size, size) bool shape mask)."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    _clutter(rng, draw, size, lines=int(rng.integers(8, 20)), dots=int(rng.integers(20, 60)),
             blobs=int(rng.integers(3, 10)))

    # Shape: its whole outer circle stays MARGIN inside the image, so the shape is never cut, not
    # even by a training crop that keeps 80% of the side.
    radius = rng.uniform(MIN_EXTENT, MAX_EXTENT) * size / 2
    center = rng.uniform(radius + MARGIN * size, size - radius - MARGIN * size, 2)
    mask = mask_image(name, size, center, radius, angle=rng.uniform(0, 2 * math.pi))
    # Mean colour under the shape, from 64-px thumbnails (cheap, and enough to pick a contrast).
    thumb = min(size, 64)
    under = np.asarray(mask.resize((thumb, thumb), Image.NEAREST)) > 127            # (t, t)
    background = np.asarray(image.resize((thumb, thumb), Image.NEAREST))[under]     # (n, 3)
    local = background.mean(0) if len(background) else np.full(3, 128.0)
    box = mask.getbbox()  # paste only inside the shape's bounding box: 3-10x less work
    image.paste(lighter_colour(rng, local), box, mask.crop(box))

    # A few thin lines across everything, the shape included: partial occlusion, not a new shape.
    _clutter(rng, draw, size, lines=int(rng.integers(1, 5)), dots=0, blobs=0)

    # Fine grey grain, one value per pixel for all channels (3x cheaper than colour grain).
    pixels = np.asarray(image, dtype=np.int16)                          # (H, W, 3)
    pixels += rng.integers(-10, 11, (size, size, 1), dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8), np.asarray(mask) > 127


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------

@dataclass
class SynthSummary:
    """What `synthesize` wrote (or found already written)."""

    out_dir: str
    """Root folder holding train/ and val/."""
    classes: list[str]
    """Class names, one folder each, in class-index order."""
    counts: dict[str, int]
    """Images per split, all classes together: {"train": n, "val": n}."""
    size: int
    """Image side in pixels (images are square)."""
    file_format: str
    """jpeg or tiff."""
    seconds: float
    """Wall time spent generating (0 when the folder was reused)."""
    reused: bool = False
    """True when the folder already held this exact dataset and nothing was written."""

    def describe(self) -> str:
        """A few human-readable lines for the CLI."""
        total = sum(self.counts.values())
        per = {split: n // len(self.classes) for split, n in self.counts.items()}
        head = (f"{self.out_dir} already holds this dataset; nothing written" if self.reused else
                f"wrote {total} images of {self.size}x{self.size} px to {self.out_dir} "
                f"in {self.seconds:.1f} s")
        splits = ", ".join(f"{split}: {n} ({per[split]} per class)"
                           for split, n in self.counts.items())
        lines = [head, f"  {splits}", f"  classes: {', '.join(self.classes)}"]
        if self.size * self.size > DEFAULT_MAX_PIXELS:
            lines.append(f"  each image is {self.size * self.size / 1e6:.0f} MP, over the default pixel cap of "
                         f"{DEFAULT_MAX_PIXELS / 1e6:.0f} MP: pass --max-pixels {self.size * self.size} to "
                         "train, predict and check them")
        return "\n".join(lines)


def _check(classes: int, per_class: int, size: int, seed: int, val_fraction: float,
           quality: int, workers: int, kind: str = "shapes", file_format: str = "jpeg") -> int:
    """Raise CnnlabError for unusable arguments; returns the number of val images per class."""
    if kind not in KINDS:
        raise CnnlabError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    if file_format not in FORMATS:
        raise CnnlabError(f"format={file_format!r}: choose one of {', '.join(FORMATS)}")
    if kind == "sparse" and size < sparse.MIN_SIZE:
        raise CnnlabError(f"size={size}: the sparse kind needs images of at least {sparse.MIN_SIZE} px (below "
                          f"that its 3-8 objects are not sparse; {sparse.DEFAULT_SIZE} is its default)")
    if kind == "sparse" and file_format == "jpeg" and size > JPEG_MAX_SIZE:
        raise CnnlabError(f"size={size}: a JPEG is encoded from the whole image in memory; above "
                          f"{JPEG_MAX_SIZE} px use --format tiff, written a tile at a time")
    names = _names(kind)
    if not 2 <= classes <= len(names):
        raise CnnlabError(f"classes={classes}: choose 2 to {len(names)} "
                          f"(available shapes: {', '.join(names)})")
    if kind == "objects" and size < OBJECTS_MIN_SIZE:
        raise CnnlabError(f"size={size}: the objects kind needs images of at least {OBJECTS_MIN_SIZE} px (its "
                          f"objects are 1/{OBJECT_FRACTION_INVERSE} of the side; 3000 or more is what it is for)")
    if not 0 < val_fraction < 1:
        raise CnnlabError(f"val_fraction={val_fraction}: must be between 0 and 1 (e.g. 0.2)")
    n_val = round(per_class * val_fraction)
    if per_class < 2 or n_val < 1 or n_val >= per_class:
        raise CnnlabError(f"per_class={per_class} with val_fraction={val_fraction} gives {n_val} "
                          f"val and {per_class - n_val} train images per class; each split needs "
                          f"at least 1, so raise per_class")
    if size < MIN_SIZE:
        raise CnnlabError(f"size={size}: images must be at least {MIN_SIZE} px")
    if seed < 0:
        raise CnnlabError(f"seed={seed}: must be 0 or more")
    if not 1 <= quality <= 100:
        raise CnnlabError(f"quality={quality}: JPEG quality must be 1 to 100 (90 is a good choice)")
    if workers < 1:
        raise CnnlabError(f"workers={workers}: must be 1 or more")
    return n_val


# --------------------------------------------------------------------------------------------
# the "objects" kind: small copies of the class's shape scattered over a large cluttered image
# --------------------------------------------------------------------------------------------

KINDS = ("shapes", "objects", "sparse")
DEFAULT_SIZES = {"shapes": 1024, "objects": 1024, "sparse": sparse.DEFAULT_SIZE}
# Shapes whose small copies stay distinct from each other and from the clutter's ellipses and dots.
OBJECT_SHAPES = ("cross", "star", "triangle", "square", "heart", "arrow", "bowtie")
# object extent: ~1/64 of the side, 47 px at 3000 px: 3.5 px once shrunk to 224 (a blob whose shape is gone),
# 24 px in a tile cut at scale 0.5. Not smaller: measured on 64 px crops centred on one object each (resnet9,
# 6 epochs), objects of 12 px (scale 0.25) reach 52% validation accuracy, objects of 24 px 98%: at 12 px a
# shape is 3x3 patches of resnet9's 4 px stem, too few to tell a star from a cross among the clutter's lines.
OBJECT_FRACTION_INVERSE = 64
# enough that a 256 px tile at scale 0.5 (512 px of the file: 1/34 of a 3000 px image) holds 2.6-5.3 of them on
# average: a tile without any would be a training example labelled with a class it does not show
OBJECTS_PER_IMAGE = (90, 180)
OBJECTS_MIN_SIZE = 512


def _names(kind: str) -> tuple[str, ...]:
    return SHAPE_NAMES if kind == "shapes" else OBJECT_SHAPES


def render_objects(name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One image of the objects kind: ((size, size, 3) uint8 pixels, object centres (x, y)).

    Every object is drawn into its own small patch (never a full-size mask), light on the background under it
    (as the shapes kind), so the cost grows with the number of objects, not with the image side."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    scale = size / 1024  # clutter as dense as the shapes kind's, per area
    _clutter(rng, draw, size, lines=int(rng.integers(8, 20) * scale ** 2), dots=int(rng.integers(20, 60) * scale ** 2),
             blobs=int(rng.integers(3, 10) * scale ** 2))
    extent = max(12.0, size / OBJECT_FRACTION_INVERSE)
    centres = []
    for _ in range(int(rng.integers(*OBJECTS_PER_IMAGE))):
        radius = rng.uniform(0.8, 1.2) * extent / 2
        patch = int(2 * radius + 4)
        x, y = rng.uniform(patch, size - patch, 2)
        mask = mask_image(name, patch, (patch / 2, patch / 2), radius, angle=rng.uniform(0, 2 * math.pi))
        box = (int(x - patch / 2), int(y - patch / 2))
        under = np.asarray(image.crop((*box, box[0] + patch, box[1] + patch)), dtype=float).reshape(-1, 3).mean(0)
        image.paste(lighter_colour(rng, under), box, mask)
        centres.append((int(x), int(y)))
    pixels = np.asarray(image, dtype=np.int16)
    pixels += rng.integers(-10, 11, (size, size, 1), dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8), centres


def _jobs(root: Path, names: list[str], per_class: int, n_val: int,
          suffix: str = ".jpg") -> list[tuple[int, int, Path]]:
    """(class index, image index, file path) per image; the last n_val of each class are val."""
    jobs = []
    for c, name in enumerate(names):
        for i in range(per_class):
            split = "val" if i >= per_class - n_val else "train"
            jobs.append((c, i, root / split / name / f"{name}_{i:04d}{suffix}"))
    return jobs


def _region_source(kind: str, class_index: int, size: int, rng: np.random.Generator, key: tuple[int, ...]):
    """region(x0, y0, x1, y1) -> (y1 - y0, x1 - x0, 3) uint8 of one image: the sparse kind draws each region
    when asked; the others are drawn whole here and cut."""
    if kind == "sparse":
        scene = sparse.layout(OBJECT_SHAPES[class_index], size, rng, key)
        return lambda x0, y0, x1, y1: sparse.render_region(scene, x0, y0, x1, y1)
    if kind == "objects":
        pixels, _ = render_objects(OBJECT_SHAPES[class_index], size, rng)
    else:
        pixels, _ = render(SHAPE_NAMES[class_index], size, rng)
    return lambda x0, y0, x1, y1: pixels[y0:y1, x0:x1]


def pyramid_factors(size: int) -> list[int]:
    """Reduction of each TIFF level: 1 (the image), 2, 4, ... while a level keeps PYRAMID_MIN_SIDE px."""
    factors = [1]
    while math.ceil(size / (factors[-1] * 2)) >= PYRAMID_MIN_SIDE:
        factors.append(factors[-1] * 2)
    return factors


def _level_tiles(region, size: int, factor: int):
    """The tiles of the level reduced by `factor` (box average: PIL's reduce), row by row."""
    side, span = math.ceil(size / factor), sparse.TILE * factor
    for top in range(0, side, sparse.TILE):
        for left in range(0, side, sparse.TILE):
            pixels = region(left * factor, top * factor, min(size, left * factor + span),
                            min(size, top * factor + span))
            yield pixels if factor == 1 else np.asarray(Image.fromarray(pixels).reduce(factor))


def _write_one(seed: int, class_index: int, index: int, size: int, quality: int,
               path: Path, kind: str = "shapes", file_format: str = "jpeg") -> None:
    """Render and save one image; its RNG depends only on (seed, class, index)."""
    rng = np.random.default_rng([seed, class_index, index])
    region = _region_source(kind, class_index, size, rng, (seed, class_index, index))
    if file_format == "jpeg":
        save_image(region(0, 0, size, size), path, quality)
        return
    # every level drawn (or cut) again tile by tile: memory stays one region, whatever the image's size
    levels = [((math.ceil(size / f),) * 2, _level_tiles(region, size, f)) for f in pyramid_factors(size)]
    save_tiled_tiff(path, levels, tile=sparse.TILE, quality=quality)


def _write_star(job: tuple) -> None:
    """Process-pool adapter for `_write_one`."""
    _write_one(*job)


def _reusable(root: Path, params: dict, jobs: list) -> bool:
    """True if `root` already holds exactly this dataset; False if it is free to (re)write into.

    Raises rather than touch a folder that holds anything else.
    """
    if root.exists() and not root.is_dir():
        raise CnnlabError(f"{root} exists and is not a folder; choose another output path")
    if not root.exists() or not any(root.iterdir()):
        return False
    meta_path = root / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        raise CnnlabError(f"{root} is not empty and holds no readable {META_NAME}; refusing to "
                          f"write into it. Choose a new or empty folder") from None
    old = meta.get("parameters", {})
    if old != params:
        changed = ", ".join(f"{k} {old.get(k, 'unset')!r} there, {params.get(k, 'unset')!r} asked"
                            for k in [*params, *(k for k in old if k not in params)] if old.get(k) != params.get(k))
        raise CnnlabError(f"{root} already holds a synthetic dataset made with other parameters "
                          f"({changed}); choose another folder or delete this one")
    # Same parameters: our own folder. Rewrite it (same bytes) if a run was cut short.
    return bool(meta.get("complete")) and all(path.is_file() for *_, path in jobs)


def synthesize(out_dir: Annotated[str | os.PathLike, Help("Folder to write train/<class>/ and val/<class>/ into.")],
               classes: Annotated[int, Help("Number of classes.")] = 6,
               per_class: Annotated[int, Help("Images per class (train + val).")] = 100,
               size: Annotated[int | None, Help("Image side in pixels (default: the kind's: shapes and objects 1024, "
                                                "sparse 4000).")] = None,
               seed: Annotated[int, Help("Same seed, byte-identical files.")] = 0,
               val_fraction: Annotated[float, Help("Share of each class written to val/.")] = 0.2,
               quality: Annotated[int, Help("JPEG quality (1-100).")] = 90,
               workers: Annotated[int, Help("Processes writing images (same bytes whatever the number).")] = 1,
               kind: Annotated[str, Help(
                   "shapes (one large shape per image), objects (many small copies of the class's shape on a large "
                   "cluttered image: for tiled training) or sparse (very large images where a handful of small "
                   "objects among similar distractors decide the class: most tiles hold none).")] = "shapes",
               file_format: Annotated[str, Help("jpeg, or tiff (tiled, with a pyramid: for very large images).",
                                                flag="--format")] = "jpeg") -> SynthSummary:
    """Write a built-in large-image dataset: shapes on a cluttered, textured background.

    out_dir/{train,val}/<class>/<class>_NNNN.jpg (.tif) and synth.json; the same arguments give the same bytes.
    `size` None: the kind's default (DEFAULT_SIZES)."""
    size = DEFAULT_SIZES.get(kind, 1024) if size is None else size
    n_val = _check(classes, per_class, size, seed, val_fraction, quality, workers, kind, file_format)
    root = Path(out_dir)
    names = list(_names(kind)[:classes])
    counts = {"train": (per_class - n_val) * classes, "val": n_val * classes}
    params = {"generator_version": GENERATOR_VERSION, "classes": classes, "per_class": per_class,
              "size": size, "seed": seed, "val_fraction": val_fraction, "quality": quality}
    # (kinds and formats added later add their parameters, so folders written before them stay recognised)
    if kind == "objects":
        params |= {"kind": kind, "objects_per_image": list(OBJECTS_PER_IMAGE)}
    if kind == "sparse":
        params |= {"kind": kind, "objects_per_image": list(sparse.OBJECTS_PER_IMAGE),
                   "object_size": sparse.OBJECT_SIZE, "distractors_per_megapixel": sparse.DISTRACTORS_PER_MEGAPIXEL}
    if file_format != "jpeg":
        params |= {"format": file_format, "tile": sparse.TILE, "pyramid_min_side": PYRAMID_MIN_SIDE}
    jobs = _jobs(root, names, per_class, n_val, SUFFIXES[file_format])
    if _reusable(root, params, jobs):
        return SynthSummary(str(root), names, counts, size, file_format, 0.0, reused=True)

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    meta = {"parameters": params, "class_names": names, "counts": counts, "complete": False}
    # Written first, complete=False, so that an interrupted run is recognised as ours and redone.
    (root / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    args = [(seed, c, i, size, quality, path, kind, file_format) for c, i, path in jobs]
    if workers == 1:
        for job in args:
            _write_one(*job)
    else:
        with ProcessPoolExecutor(workers, initializer=leave_signals_to_parent) as pool:
            list(pool.map(_write_star, args, chunksize=8))
    meta["complete"] = True
    (root / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return SynthSummary(str(root), names, counts, size, file_format, time.perf_counter() - start)
