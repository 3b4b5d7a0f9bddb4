"""The built-in datasets, one geometric shape class per image on a cluttered, textured background.

    kind "shapes"   one large shape per image (a quarter to half of the side): the default, for learning
    kind "objects"  90-180 small copies of the class's shape (a few dozen pixels each, about 1/64 of
                    the side) scattered over a large, cluttered image (use >= 3000 px): the class is decided
                    by detail that shrinking the image to 224 px erases, so whole-image training stays near
                    chance while tiles at half the image's scale see it (cnnlab train --tile 256 --scale 0.5)

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
from cnnlab.errors import CnnlabError
from cnnlab.signals import leave_signals_to_parent
from cnnlab.data.images import save_image

# Bump when the drawing code changes, so that an old folder is not mistaken for the new dataset.
GENERATOR_VERSION = 2
MIN_SIZE = 32
META_NAME = "synth.json"

# Shape extent (diameter of the circle around it) as a fraction of the image side.
MIN_EXTENT, MAX_EXTENT = 0.25, 0.55
# Free border around the shape's outer circle, as a fraction of the side.
MARGIN = 0.05


# --------------------------------------------------------------------------------------------
# shapes: each is a list of (polygon, fill) parts in unit coordinates, centred on the origin,
# every point within radius 1. fill 255 adds area, fill 0 cuts a hole (drawn in order).
# --------------------------------------------------------------------------------------------

def _regular(n: int, radius: float = 1.0, phase: float = 0.0, offset=(0.0, 0.0)) -> np.ndarray:
    """n points on a circle: (n, 2)."""
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([offset[0] + radius * np.cos(angles), offset[1] + radius * np.sin(angles)], 1)


def _star(points: int, inner: float) -> np.ndarray:
    """Star with alternating outer radius 1 and inner radius `inner`: (2*points, 2)."""
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


def _cross(half_width: float) -> np.ndarray:
    """Plus sign of the given arm half width, arm-end corners on the unit circle: (12, 2)."""
    w = half_width
    arm = math.sqrt(1 - w * w)  # so that the arm-end corners lie on the unit circle
    return np.array([(w, -arm), (w, -w), (arm, -w), (arm, w), (w, w), (w, arm),
                     (-w, arm), (-w, w), (-arm, w), (-arm, -w), (-w, -w), (-w, -arm)])


def _heart() -> np.ndarray:
    """The classic parametric heart, centred on its bounding box and scaled into the unit disc."""
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    # minus: image y points down, and the heart should stand upright at angle 0
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], 1)
    points -= (points.max(0) + points.min(0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


def _arrow() -> np.ndarray:
    """Arrow pointing right: a shaft and a wide triangular head, tips on the unit circle."""
    shaft, head_back, head_half = 0.16, 0.15, 0.62
    tail = math.sqrt(1 - shaft * shaft)
    return np.array([(-tail, -shaft), (head_back, -shaft), (head_back, -head_half), (1.0, 0.0),
                     (head_back, head_half), (head_back, shaft), (-tail, shaft)])


def _bowtie() -> np.ndarray:
    """Two triangles meeting at a narrow neck (an hourglass lying on its side)."""
    c, s, neck = math.cos(math.radians(38)), math.sin(math.radians(38)), 0.14
    return np.array([(-c, -s), (0.0, -neck), (c, -s), (c, s), (0.0, neck), (-c, s)])


_DISC = _regular(96)

# Order matters: the first `classes` names are used. Not included: hexagon and pentagon, which at
# 128 px and the smallest scale differ from a circle by 2-3 pixels; ellipse/rectangle, which a
# rotated or scaled circle/square would imitate.
SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
    "circle": [(_DISC, 255)],
    "square": [(_regular(4, phase=math.pi / 4), 255)],
    "triangle": [(_regular(3, phase=-math.pi / 2), 255)],
    "star": [(_star(5, inner=0.45), 255)],
    "cross": [(_cross(half_width=0.3), 255)],
    # a wide hole so that the ring cannot pass for a filled circle once downscaled
    "ring": [(_DISC, 255), (_regular(96, radius=0.58), 0)],
    # disc minus an offset disc; the thick middle stays ~0.5 wide so it is not a thin arc
    "crescent": [(_DISC, 255), (_regular(96, radius=0.85, offset=(0.5, 0.0)), 0)],
    "heart": [(_heart(), 255)],
    "arrow": [(_arrow(), 255)],
    "bowtie": [(_bowtie(), 255)],
}
SHAPE_NAMES = tuple(SHAPES)


def _place(points: np.ndarray, center: np.ndarray, radius: float, angle: float) -> list[tuple]:
    """Rotate by `angle`, scale by `radius`, move to `center`: list of (x, y) for ImageDraw."""
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    placed = points @ rotation.T * radius + center  # (n, 2)
    return [tuple(p) for p in placed.tolist()]


def _mask_image(name: str, size: int, center, radius: float, angle: float) -> Image.Image:
    """Mode-L (size, size) image: 255 on shape `name`, 0 elsewhere."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for points, fill in SHAPES[name]:
        draw.polygon(_place(points, np.asarray(center, dtype=float), radius, angle), fill=fill)
    return mask


def shape_mask(name: str, size: int, center, radius: float, angle: float) -> np.ndarray:
    """Boolean (size, size) mask of shape `name` at `center`, outer `radius`, rotated by `angle`."""
    return np.asarray(_mask_image(name, size, center, radius, angle)) > 127


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, side: int, grid: int, spread: float) -> np.ndarray:
    """Colour noise on a (grid, grid) lattice, bicubic-upsampled: (side, side, 3) int16, mean 0."""
    coarse = np.clip(rng.normal(128, spread, (grid, grid, 3)), 0, 255).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((side, side), Image.BICUBIC)
    return np.asarray(smooth, dtype=np.int16) - 128


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Dark-to-mid, muted colour field + faint mid-frequency texture: RGB (size, size)."""
    # Both layers are built at <= 256 px and upsampled once: one full-size resize instead of two,
    # the cost that dominated generation (the texture has no detail finer than 1/40 of the side).
    side = min(size, 256)
    # Luma mostly below ~155, so that a colour 100 levels lighter exists for the shape.
    base = rng.uniform(25, 115) + rng.normal(0, 15, 3)                         # grey + a tint
    drift = _smooth_noise(rng, side, int(rng.integers(3, 7)), spread=20)       # slow colour drift
    # Half the drift's chroma: strong colour edges in the background are what slows learning most.
    drift = (drift + drift.mean(2, keepdims=True).astype(np.int16)) // 2
    texture = _smooth_noise(rng, side, int(rng.integers(20, 40)), spread=6)    # mottled texture
    small = np.clip(drift + texture + base.astype(np.int16), 0, 255).astype(np.uint8)  # (s, s, 3)
    return Image.fromarray(small).resize((size, size), Image.BILINEAR)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Any RGB colour."""
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int, lines: int,
             dots: int, blobs: int) -> None:
    """Thin lines, dots and small ellipses: all far thinner or smaller than the smallest shape."""
    thick = max(1, size // 340)  # 1-3 px at 1024: below one pixel once downscaled to 128
    for _ in range(lines):
        start = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4) * size
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        draw.line([tuple(start), tuple(end)], fill=_random_colour(rng),
                  width=int(rng.integers(1, thick + 1)))
    for _ in range(dots):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(0.5, max(1.0, size / 200))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_random_colour(rng))
    for _ in range(blobs):
        # radius <= 3% of the side, against >= 12.5% for the smallest shape's outer circle
        x, y = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.008, 0.03, 2) * size
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=_random_colour(rng))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3) RGB values."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def _lighter_colour(rng: np.random.Generator, local: np.ndarray, min_contrast: float = 100,
                    tries: int = 64) -> tuple[int, int, int]:
    """A random colour whose luma is >= min_contrast (of 255) above that of `local` (3,).

    Luma contrast, not just any colour distance, and always light-on-dark: a small CNN's first
    filters find light/dark edges of one polarity within a few epochs, while iso-luminant hue edges
    or edges of either sign take it longer (measured by hand: +0.05-0.1 val accuracy at 10 epochs).
    """
    candidates = rng.integers(0, 256, (tries, 3))                      # (tries, 3)
    contrast = _luminance(candidates) - _luminance(local)              # (tries,)
    good = np.nonzero(contrast >= min_contrast)[0]
    best = good[0] if len(good) else np.argmax(contrast)  # first good one keeps the hue random
    return tuple(int(v) for v in candidates[best])


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
    mask = _mask_image(name, size, center, radius, angle=rng.uniform(0, 2 * math.pi))
    # Mean colour under the shape, from 64-px thumbnails (cheap, and enough to pick a contrast).
    thumb = min(size, 64)
    under = np.asarray(mask.resize((thumb, thumb), Image.NEAREST)) > 127            # (t, t)
    background = np.asarray(image.resize((thumb, thumb), Image.NEAREST))[under]     # (n, 3)
    local = background.mean(0) if len(background) else np.full(3, 128.0)
    box = mask.getbbox()  # paste only inside the shape's bounding box: 3-10x less work
    image.paste(_lighter_colour(rng, local), box, mask.crop(box))

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
        return f"{head}\n  {splits}\n  classes: {', '.join(self.classes)}"


def _check(classes: int, per_class: int, size: int, seed: int, val_fraction: float,
           quality: int, workers: int, kind: str = "shapes") -> int:
    """Raise CnnlabError for unusable arguments; returns the number of val images per class."""
    if kind not in KINDS:
        raise CnnlabError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
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

KINDS = ("shapes", "objects")
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
    return OBJECT_SHAPES if kind == "objects" else SHAPE_NAMES


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
        mask = _mask_image(name, patch, (patch / 2, patch / 2), radius, angle=rng.uniform(0, 2 * math.pi))
        box = (int(x - patch / 2), int(y - patch / 2))
        under = np.asarray(image.crop((*box, box[0] + patch, box[1] + patch)), dtype=float).reshape(-1, 3).mean(0)
        image.paste(_lighter_colour(rng, under), box, mask)
        centres.append((int(x), int(y)))
    pixels = np.asarray(image, dtype=np.int16)
    pixels += rng.integers(-10, 11, (size, size, 1), dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8), centres


def _jobs(root: Path, names: list[str], per_class: int, n_val: int) -> list[tuple[int, int, Path]]:
    """(class index, image index, file path) per image; the last n_val of each class are val."""
    jobs = []
    for c, name in enumerate(names):
        for i in range(per_class):
            split = "val" if i >= per_class - n_val else "train"
            jobs.append((c, i, root / split / name / f"{name}_{i:04d}.jpg"))
    return jobs


def _write_one(seed: int, class_index: int, index: int, size: int, quality: int,
               path: Path, kind: str = "shapes") -> None:
    """Render and save one image; its RNG depends only on (seed, class, index)."""
    rng = np.random.default_rng([seed, class_index, index])
    if kind == "objects":
        pixels, _ = render_objects(OBJECT_SHAPES[class_index], size, rng)
    else:
        pixels, _ = render(SHAPE_NAMES[class_index], size, rng)
    save_image(pixels, path, quality)


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
        changed = ", ".join(f"{k} {old.get(k)!r} there, {v!r} asked"
                            for k, v in params.items() if old.get(k) != v)
        raise CnnlabError(f"{root} already holds a synthetic dataset made with other parameters "
                          f"({changed}); choose another folder or delete this one")
    # Same parameters: our own folder. Rewrite it (same bytes) if a run was cut short.
    return bool(meta.get("complete")) and all(path.is_file() for *_, path in jobs)


def synthesize(out_dir: Annotated[str | os.PathLike, Help("Folder to write train/<class>/ and val/<class>/ into.")],
               classes: Annotated[int, Help("Number of classes.")] = 6,
               per_class: Annotated[int, Help("Images per class (train + val).")] = 100,
               size: Annotated[int, Help("Image side in pixels.")] = 1024,
               seed: Annotated[int, Help("Same seed, byte-identical files.")] = 0,
               val_fraction: Annotated[float, Help("Share of each class written to val/.")] = 0.2,
               quality: Annotated[int, Help("JPEG quality (1-100).")] = 90,
               workers: Annotated[int, Help("Processes writing images (same bytes whatever the number).")] = 1,
               kind: Annotated[str, Help("shapes (one large shape per image) or objects (many small copies of the "
                                         "class's shape on a large cluttered image: for tiled training; use --size "
                                         "3000).")] = "shapes") -> SynthSummary:
    """Write a built-in large-image dataset: shapes on a cluttered, textured background.

    out_dir/{train,val}/<class>/<class>_NNNN.jpg and synth.json; the same arguments give the same bytes."""
    n_val = _check(classes, per_class, size, seed, val_fraction, quality, workers, kind)
    root = Path(out_dir)
    names = list(_names(kind)[:classes])
    counts = {"train": (per_class - n_val) * classes, "val": n_val * classes}
    params = {"generator_version": GENERATOR_VERSION, "classes": classes, "per_class": per_class,
              "size": size, "seed": seed, "val_fraction": val_fraction, "quality": quality}
    if kind != "shapes":  # (the shapes kind keeps its parameters, so its existing folders stay recognised)
        params |= {"kind": kind, "objects_per_image": list(OBJECTS_PER_IMAGE)}
    jobs = _jobs(root, names, per_class, n_val)
    if _reusable(root, params, jobs):
        return SynthSummary(str(root), names, counts, size, 0.0, reused=True)

    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    meta = {"parameters": params, "class_names": names, "counts": counts, "complete": False}
    # Written first, complete=False, so that an interrupted run is recognised as ours and redone.
    (root / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    args = [(seed, c, i, size, quality, path, kind) for c, i, path in jobs]
    if workers == 1:
        for job in args:
            _write_one(*job)
    else:
        with ProcessPoolExecutor(workers, initializer=leave_signals_to_parent) as pool:
            list(pool.map(_write_star, args, chunksize=8))
    meta["complete"] = True
    (root / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return SynthSummary(str(root), names, counts, size, time.perf_counter() - start)
