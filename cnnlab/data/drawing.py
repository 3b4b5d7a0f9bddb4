"""Drawing the built-in datasets' pictures: the shapes (as polygons in unit coordinates), their masks, the
textured background and the colours that stand out on it. Shared by the kinds of cnnlab.data.synth (shapes,
objects) and cnnlab.data.sparse.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

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


def place(points: np.ndarray, center: np.ndarray, radius: float, angle: float) -> list[tuple]:
    """Rotate by `angle`, scale by `radius`, move to `center`: list of (x, y) for ImageDraw."""
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    placed = points @ rotation.T * radius + center  # (n, 2)
    return [tuple(p) for p in placed.tolist()]


def mask_image(name: str, size: int, center, radius: float, angle: float) -> Image.Image:
    """Mode-L (size, size) image: 255 on shape `name`, 0 elsewhere."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for points, fill in SHAPES[name]:
        draw.polygon(place(points, np.asarray(center, dtype=float), radius, angle), fill=fill)
    return mask


def shape_mask(name: str, size: int, center, radius: float, angle: float) -> np.ndarray:
    """Boolean (size, size) mask of shape `name` at `center`, outer `radius`, rotated by `angle`."""
    return np.asarray(mask_image(name, size, center, radius, angle)) > 127


def smooth_noise(rng: np.random.Generator, side: int, grid: int, spread: float) -> np.ndarray:
    """Colour noise on a (grid, grid) lattice, bicubic-upsampled: (side, side, 3) int16, mean 0."""
    coarse = np.clip(rng.normal(128, spread, (grid, grid, 3)), 0, 255).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((side, side), Image.BICUBIC)
    return np.asarray(smooth, dtype=np.int16) - 128


def background_small(rng: np.random.Generator, size: int) -> np.ndarray:
    """The background of a (size, size) image before its one upsampling: (s, s, 3) uint8, s = min(size, 256)."""
    # Both layers are built at <= 256 px and upsampled once: one full-size resize instead of two,
    # the cost that dominated generation (the texture has no detail finer than 1/40 of the side).
    side = min(size, 256)
    # Luma mostly below ~155, so that a colour 100 levels lighter exists for the shape.
    base = rng.uniform(25, 115) + rng.normal(0, 15, 3)                         # grey + a tint
    drift = smooth_noise(rng, side, int(rng.integers(3, 7)), spread=20)       # slow colour drift
    # Half the drift's chroma: strong colour edges in the background are what slows learning most.
    drift = (drift + drift.mean(2, keepdims=True).astype(np.int16)) // 2
    texture = smooth_noise(rng, side, int(rng.integers(20, 40)), spread=6)    # mottled texture
    return np.clip(drift + texture + base.astype(np.int16), 0, 255).astype(np.uint8)  # (s, s, 3)


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Any RGB colour."""
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3) RGB values."""
    return rgb @ np.array([0.299, 0.587, 0.114])


def lighter_colour(rng: np.random.Generator, local: np.ndarray, min_contrast: float = 100,
                    tries: int = 64) -> tuple[int, int, int]:
    """A random colour whose luma is >= min_contrast (of 255) above that of `local` (3,).

    Luma contrast, not just any colour distance, and always light-on-dark: a small CNN's first
    filters find light/dark edges of one polarity within a few epochs, while iso-luminant hue edges
    or edges of either sign take it longer (measured by hand: +0.05-0.1 val accuracy at 10 epochs).
    """
    candidates = rng.integers(0, 256, (tries, 3))                      # (tries, 3)
    contrast = luminance(candidates) - luminance(local)              # (tries,)
    good = np.nonzero(contrast >= min_contrast)[0]
    best = good[0] if len(good) else np.argmax(contrast)  # first good one keeps the hue random
    return tuple(int(v) for v in candidates[best])
