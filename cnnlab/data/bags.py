"""Images as bags of tiles (runs with --aggregate attention): what the loader hands over, and the tile grid.

A bag run's label belongs to the whole image, so an item is the whole image at the run's pixel scale, not a tile:
the dataset yields it as the evaluation view does (the decoded-image cache's pixels, no transform), a batch is a
list of them (their sizes differ), and the training step cuts the tiles it needs (cnnlab.training.bags). Tiles
are augmented per tile on the device, from per-tile seeds derived from the image's seed.

The grid of a bag is the sliding window's (cnnlab.data.tiles.tile_positions at the run's overlap, 0 by default:
every pixel in one tile, the last row and column shifted inward). In training the grid is moved by a random
offset below one stride, a pure function of the sample's seed, so that what a tile border cuts in one epoch lies
whole inside a tile in another (tiles at the top and left edges keep every pixel in the bag).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.data.dataset import Batch, ImageDataset, collate_skip_bad
from cnnlab.data.tiles import cut_tiles, positions_1d, tile_positions


@dataclass
class BagBatch(Batch):
    """A batch of whole images of different sizes: images is a list of uint8 (3, H_i, W_i) at the run's scale;
    labels, indices and seeds (N,) as in Batch."""

    images: list

    def pin_memory(self) -> "BagBatch":
        return self  # tiles are cut on the host and copied to the device a chunk at a time


def collate_bags(items) -> BagBatch:
    """A list of whole images (unreadable samples, None, dropped) with their labels, indices and seeds."""
    good = [item for item in items if item is not None]
    stacked = collate_skip_bad([(torch.empty(0), *item[1:]) for item in good])  # the labels, indices, seeds
    return BagBatch([item[0] for item in good], stacked.labels, stacked.indices, stacked.seeds)


class BagDataset(ImageDataset):
    """Whole images at the run's scale (the transform is the evaluation view's: none), batched as lists."""

    collate = staticmethod(collate_bags)


def grid(height: int, width: int, tile: int, overlap: float, seed: int | None = None) -> list[tuple[int, int]]:
    """(top, left) of a bag's tiles in a (height, width) image: the sliding window's grid, or with `seed` (training)
    that grid moved down and right by a random offset in [0, stride), with a tile at the top and left edges added so
    that every pixel is still in a tile (where the moved grid leaves a strip uncovered)."""
    if seed is None:
        return tile_positions(height, width, tile, overlap)
    stride = max(1, round(tile * (1 - overlap)))
    offsets = torch.randint(0, stride, (2,), generator=torch.Generator().manual_seed(seed)).tolist()

    def starts(length: int, offset: int) -> list[int]:
        moved = [offset + start for start in positions_1d(length - offset, tile, stride)] if length - offset >= tile \
            else []
        return sorted({0, *moved, length - tile})

    return [(top, left) for top in starts(height, offsets[0]) for left in starts(width, offsets[1])]


def image_shape(image: torch.Tensor) -> tuple[int, int]:
    """(height, width) of a bag's image (3, H, W)."""
    return int(image.shape[-2]), int(image.shape[-1])


def read_tiles(image: torch.Tensor, positions: list[tuple[int, int]], tile: int) -> torch.Tensor:
    """(n, 3, tile, tile) uint8: the tiles of a bag's image at `positions`."""
    return cut_tiles(image, positions, tile)


def tile_seeds(seed: int, count: int) -> torch.Tensor:
    """(count,) per-tile augmentation seeds, a pure function of the image's sample seed."""
    return torch.randint(0, 2**62, (count,), generator=torch.Generator().manual_seed(seed))
