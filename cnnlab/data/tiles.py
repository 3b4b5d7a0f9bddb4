"""Large images at their own resolution: random tiles for training, a sliding window for prediction.

Shrinking a 4000x3000 photo or a microscope scan to 224 px loses whatever small detail decides its class.
Tiled runs instead keep each image at a fixed pixel scale (1.0 = the file's own pixels; the decoded-image
cache stores it once at that scale) and

  train    on random tiles of `tile` x `tile` px, labelled with the image's class: an epoch draws from each image
           as many tiles as its area holds (tile_draws), so an epoch covers every image about once, whatever
           its size; every epoch draws new ones (the position is a pure function of the per-sample seed,
           like the crops);
  predict  by sliding a `tile` window over the whole scaled image, `overlap` of a tile between neighbours,
           the last row and column of tiles shifted inward so they stay inside the image; the tiles' logits
           become the image's by their mean (or their max: "present anywhere").

Positions are (top, left) in the scaled image. Heatmaps (per-class probability over the image) average the
tiles that cover each cell of the window's grid.
"""

from __future__ import annotations

import torch

from cnnlab.errors import CnnlabError

AGGREGATES = ("mean", "max")
# An epoch draws at most this many tiles from one image: beyond it, an epoch of a folder of very large images
# (a 4000x3000 photo holds 183 tiles of 256 px) would be a long time between validations and checkpoints;
# more coverage then comes from more epochs.
MAX_DRAWS = 64


def tile_draws(height: int, width: int, tile: int) -> int:
    """Tiles an epoch draws from a (height, width) image (at its scale): the tiles its area holds, rounded,
    between 1 and MAX_DRAWS. One tile per image would make an epoch of 3000 px images at scale 0.25 see an
    eighth of each image."""
    return max(1, min(MAX_DRAWS, round(height * width / (tile * tile))))


def positions_1d(length: int, tile: int, stride: int) -> list[int]:
    """Starts of windows of `tile` along `length`, `stride` apart, the last one moved inward to end at the edge."""
    if length < tile:
        raise ValueError(f"length {length} < tile {tile}")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)  # the edge tile, shifted inward: no padding, every pixel covered
    return starts


def tile_positions(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """(top, left) of every window of a (height, width) image, row by row."""
    stride = max(1, round(tile * (1 - overlap)))
    return [(top, left) for top in positions_1d(height, tile, stride) for left in positions_1d(width, tile, stride)]


def cut_tiles(image: torch.Tensor, positions: list[tuple[int, int]], tile: int) -> torch.Tensor:
    """(3, H, W) -> (n, 3, tile, tile): the windows at `positions` (views stacked into one new tensor)."""
    return torch.stack([image[:, top:top + tile, left:left + tile] for top, left in positions])


def check_fits(sizes: list[tuple[int, int]], paths: list[str], tile: int, scale: float) -> None:
    """A clear error naming the first image whose scaled (height, width) cannot hold one tile."""
    for (height, width), path in zip(sizes, paths):
        if min(height, width) < tile:
            raise CnnlabError(f"{path} is {width}x{height} px at scale {scale:g}, smaller than one {tile} px tile; "
                              f"use a smaller --tile, a larger --scale (at most "
                              f"{min(height, width) / tile * scale:.3g} keeps this image), or remove the image")


class RandomTile:
    """Training transform: a random `tile` x `tile` window of the (scaled) uint8 image (3, H, W).

    The position comes from torch's global generator, which the dataset seeds per read (fork_rng), so it is
    a pure function of the sample seed."""

    def __init__(self, tile: int):
        self.tile = tile

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if min(height, width) < self.tile:
            raise CnnlabError(f"an image of {width}x{height} px is smaller than one {self.tile} px tile")
        top = int(torch.randint(0, height - self.tile + 1, ()))
        left = int(torch.randint(0, width - self.tile + 1, ()))
        return image[:, top:top + self.tile, left:left + self.tile].clone()

    def __repr__(self) -> str:
        return f"RandomTile({self.tile})"


def aggregate(logits: torch.Tensor, how: str) -> torch.Tensor:
    """(n, K) tile logits -> (K,) the image's: their mean, or their max ("present anywhere")."""
    if how not in AGGREGATES:
        raise CnnlabError(f"--aggregate {how!r}: choose mean or max")
    return logits.mean(0) if how == "mean" else logits.amax(0)


def heatmap(probabilities: torch.Tensor, positions: list[tuple[int, int]], tile: int, height: int,
            width: int, cell: int) -> torch.Tensor:
    """(K, ceil(H / cell), ceil(W / cell)) per-class probability over the image: each cell the mean of the tiles
    (their softmax, (n, K)) that cover it."""
    rows, columns = -(-height // cell), -(-width // cell)
    total = torch.zeros(probabilities.shape[1], rows, columns)
    count = torch.zeros(1, rows, columns)
    for (top, left), p in zip(positions, probabilities):
        r0, c0 = top // cell, left // cell
        r1, c1 = -(-(top + tile) // cell), -(-(left + tile) // cell)
        total[:, r0:r1, c0:c1] += p.view(-1, 1, 1)
        count[:, r0:r1, c0:c1] += 1
    return total / count.clamp(min=1)
