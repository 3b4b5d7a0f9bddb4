"""The "sparse" built-in kind: very large images whose class is decided by a handful of small objects.

Each image holds 3-8 copies of its class's shape (one of cnnlab.data.synth.OBJECT_SHAPES, 48 px across) among
distractors of the same size and look (circles, rings and crescents: shapes no class has) and the objects kind's
thin clutter, all at a fixed density per area, so a larger image is not busier, only sparser. Read at scale 0.5
(cnnlab train --tile 256 --scale 0.5) an object is 24 px, and a 256 px tile covers 512 x 512 px of the file: of a
4000 px image's 61 tiles at most 8 hold a class object, while about one distractor sits in every tile. Whole
images shrunk to 224 px keep 3 px of an object, and a tile labelled with its image's class mostly shows nothing
of it: the label is true of the image, not of its tiles.

Drawn a 256 px tile at a time, so that a 20,000 px image never exists whole in memory: the scene (background
lattice, clutter, objects, with integer coordinates) is laid out once from the image's random numbers, and every
tile is drawn from it, its grain from a generator seeded with the tile's position. Any region, any pyramid level
and the whole image therefore agree, and the bytes depend only on (seed, class, image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from cnnlab.data.drawing import background_small, lighter_colour, mask_image, random_colour
from cnnlab.data.resample import resample, taps

TILE = 256  # drawing unit and TIFF tile: grain is seeded per tile, so regions are unions of tiles
# 48 px in the file, 24 px at scale 0.5: the objects kind measured 24 px objects at 98% validation accuracy on
# crops and 12 px ones at 52% (resnet9's 4 px stem sees a 12 px shape as 3x3 patches)
OBJECT_SIZE = 48
OBJECTS_PER_IMAGE = (3, 8)  # class objects per image, whatever its size: "a handful"
# same-size shapes of no class, per megapixel of the file: ~1 per 256 px tile at scale 0.5 (0.26 MP of file),
# so "a light shape is here" says nothing about the class; only the shape does
DISTRACTORS_PER_MEGAPIXEL = 4
DISTRACTOR_SHAPES = ("circle", "ring", "crescent")
# clutter per 1024 x 1024 px, lengths and radii in file pixels: the objects kind's at its 3000 px
LINES, DOTS, BLOBS = (8, 20), (20, 60), (3, 10)
LINE_LENGTH, LINE_WIDTH, DOT_RADIUS, BLOB_RADIUS = (300, 1200), (1, 8), (0.5, 15), (24, 90)
# below this side a 256 px tile at scale 0.5 is a sixteenth of the image or more: 3-8 objects are not sparse
MIN_SIZE = 2048
# 4000 px: at scale 0.5 a bag of 61 tiles per image, at most 8 with an object (>= 87% empty); 150 images are
# ~9,000 tiles to score per epoch, twice the tiles today's tile training draws per epoch from the 3000 px objects
# set (~150 s on 2 CPU cores, forward and backward), so a 15-minute budget still holds several epochs. Larger
# sizes (8000-20,000 px, --format tiff) are for memory measurements.
DEFAULT_SIZE = 4000


@dataclass
class Scene:
    """One sparse image, laid out but not drawn: everything a tile needs, in file pixels."""

    size: int  # side in pixels (the image is square)
    background: np.ndarray  # (s, s, 3) float32: the colour field before its upsampling to `size`
    # in drawing order: ("line", (start, end), colour, width) | ("ellipse", box, colour) | ("paste", xy, mask, colour)
    items: list[tuple]
    grain: tuple[int, ...]  # seed of every tile's grain, with the tile's (row, column)
    centres: list[tuple[int, int]] = field(default_factory=list)  # the class objects' centres (x, y)
    tiles: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (row, column) -> indices into items

    def index(self) -> None:
        """Bucket the items by the tiles their bounding boxes touch, so a tile draws only what reaches it."""
        self.tiles = {}
        for i, item in enumerate(self.items):
            x0, y0, x1, y1 = _bounds(item)
            for row in range(max(0, y0 // TILE), min(self.size - 1, y1) // TILE + 1):
                for column in range(max(0, x0 // TILE), min(self.size - 1, x1) // TILE + 1):
                    self.tiles.setdefault((row, column), []).append(i)


def _bounds(item: tuple) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) an item may touch, inclusive, with a margin for line caps."""
    kind, where = item[0], item[1]
    if kind == "line":
        (xa, ya), (xb, yb) = where
        pad = item[3] + 1
        return min(xa, xb) - pad, min(ya, yb) - pad, max(xa, xb) + pad, max(ya, yb) + pad
    if kind == "ellipse":
        return where[0] - 1, where[1] - 1, where[2] + 1, where[3] + 1
    return where[0], where[1], where[0] + item[2].width, where[1] + item[2].height


def layout(name: str, size: int, rng: np.random.Generator, grain: tuple[int, ...]) -> Scene:
    """Lay out one image of class shape `name`: background, clutter, distractors, then 3-8 class objects."""
    small = background_small(rng, size)                                             # (s, s, 3) uint8
    background = small.astype(np.float32)
    area = size * size / (1024 * 1024)
    items: list[tuple] = []
    for _ in range(round(int(rng.integers(*LINES)) * area)):
        start = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(*LINE_LENGTH)
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        items.append(("line", (tuple(np.rint(start).astype(int)), tuple(np.rint(end).astype(int))),
                      random_colour(rng), int(rng.integers(LINE_WIDTH[0], LINE_WIDTH[1] + 1))))
    for count, radius in ((DOTS, DOT_RADIUS), (BLOBS, BLOB_RADIUS)):
        for _ in range(round(int(rng.integers(*count)) * area)):
            x, y = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(*radius, 2) if radius is BLOB_RADIUS else [rng.uniform(*radius)] * 2
            box = tuple(int(v) for v in np.rint([x - rx, y - ry, x + rx, y + ry]))
            items.append(("ellipse", box, random_colour(rng)))
    distractors = [DISTRACTOR_SHAPES[int(i)] for i in
                   rng.integers(0, len(DISTRACTOR_SHAPES), round(DISTRACTORS_PER_MEGAPIXEL * size * size / 1e6))]
    objects = [name] * int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    centres = []
    for k, shape in enumerate(distractors + objects):  # the class objects last: drawn over the rest
        radius = rng.uniform(0.8, 1.2) * OBJECT_SIZE / 2
        patch = int(2 * radius + 4)
        x, y = rng.uniform(patch, size - patch, 2)
        mask = mask_image(shape, patch, (patch / 2, patch / 2), radius, angle=rng.uniform(0, 2 * math.pi))
        # light on the background under it, as the other kinds (the colour field's value there)
        local = small[min(len(small) - 1, int(y * len(small) / size)), min(len(small) - 1, int(x * len(small) / size))]
        items.append(("paste", (int(x - patch / 2), int(y - patch / 2)), mask,
                      lighter_colour(rng, local.astype(float))))
        if k >= len(distractors):
            centres.append((int(x), int(y)))
    scene = Scene(size, background, items, grain, centres)
    scene.index()
    return scene


def render_tile(scene: Scene, row: int, column: int) -> np.ndarray:
    """Tile (row, column) of the image: (h, w, 3) uint8, 256 x 256 except at the right and bottom edges."""
    x0, y0 = column * TILE, row * TILE
    x1, y1 = min(scene.size, x0 + TILE), min(scene.size, y0 + TILE)
    side = len(scene.background)
    across = resample(scene.background, 1, *taps(side, scene.size, x0, x1))                 # (s, w, 3)
    colours = resample(across, 0, *taps(side, scene.size, y0, y1))                          # (h, w, 3)
    image = Image.fromarray(np.clip(np.rint(colours), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i in scene.tiles.get((row, column), ()):
        kind, where, *rest = scene.items[i]
        if kind == "line":
            (xa, ya), (xb, yb) = where
            draw.line([(xa - x0, ya - y0), (xb - x0, yb - y0)], fill=rest[0], width=rest[1])
        elif kind == "ellipse":
            draw.ellipse([where[0] - x0, where[1] - y0, where[2] - x0, where[3] - y0], fill=rest[0])
        else:
            mask, colour = rest
            image.paste(colour, (where[0] - x0, where[1] - y0), mask)
    # fine grey grain, one value per pixel for all channels, as the other kinds; seeded per tile
    grain = np.random.default_rng([*scene.grain, row, column]).integers(-10, 11, (y1 - y0, x1 - x0, 1),
                                                                         dtype=np.int16)
    return np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)


def render_region(scene: Scene, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Rows y0..y1-1, columns x0..x1-1 of the image: (y1 - y0, x1 - x0, 3) uint8, drawn tile by tile."""
    out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    for row in range(y0 // TILE, (y1 - 1) // TILE + 1):
        for column in range(x0 // TILE, (x1 - 1) // TILE + 1):
            tile = render_tile(scene, row, column)
            top, left = row * TILE, column * TILE
            r0, r1, c0, c1 = max(y0, top), min(y1, top + TILE), max(x0, left), min(x1, left + TILE)
            out[r0 - y0:r1 - y0, c0 - x0:c1 - x0] = tile[r0 - top:r1 - top, c0 - left:c1 - left]
    return out
