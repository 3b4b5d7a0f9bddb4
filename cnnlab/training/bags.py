"""Image-level training over tiles: a training step of a bag run (--aggregate attention) with Iterative Patch Selection.

Each image of the batch is a bag of its tiles (cnnlab.data.bags.grid) with the image's label. A step, as Bergner et
al. (ICLR 2023) train with IPS:

    1. select   without gradients, the model in eval mode (BatchNorm's running statistics, no dropout): every tile
                of every image scored by the attention (model.scores), score_batch tiles per forward pass, so the
                memory is one such pass whatever the image's size; each image keeps its `keep` (M) best tiles.
                In the first `warmup` epochs the attention is untrained and its ranking arbitrary: M tiles are
                drawn at random instead, and the scoring pass is skipped.
    2. learn    only the kept tiles are read again, augmented per tile and encoded with gradients (the model in
                training mode): (B, M, 3, T, T) -> the MilHead pools each bag by attention -> (B, K) logits. The
                loss and update are train_step's, as for any batch.

A step's memory is B x M tiles' activations plus one scoring pass of score_batch tiles; the image's size only adds
its n attention scores (4 bytes a tile). Selecting the top M from scores computed tile by tile equals IPS's running
top-M buffer: a tile's score depends on that tile alone (the gated attention is per tile), so the M largest of all
n scores are the same however they are visited.

Images with fewer than M tiles give bags of all their tiles; a batch's bags are padded to its largest with copies of
their own tiles, which the attention masks out (counts) and BatchNorm sees as ordinary tiles of the bag.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.data.bags import BagBatch, grid, image_shape, read_tiles, tile_seeds
from cnnlab.models.mil import top_tiles
from cnnlab.training.forward import InputPipeline


def training_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """Each module's training flag (frozen modules stay in eval mode under --freeze: put back exactly)."""
    return {module: module.training for module in model.modules()}


@torch.no_grad()
def score_tiles(model: nn.Module, images: list[torch.Tensor], positions: list[list[tuple[int, int]]], tile: int,
                pipeline: InputPipeline, batch_size: int) -> list[torch.Tensor]:
    """The attention score of every tile of every image, (n_i,) float32 on the CPU each: the tiles of all images
    in one stream, `batch_size` per forward pass, the model in eval mode (restored after)."""
    modes = training_modes(model)
    model.eval()
    stream = [(i, p) for i, image_positions in enumerate(positions) for p in image_positions]
    scores = []
    try:
        for start in range(0, len(stream), batch_size):
            chunk = stream[start:start + batch_size]
            tiles = torch.cat([read_tiles(images[i], [p], tile) for i, p in chunk])          # (c, 3, T, T) uint8
            with pipeline.precision.autocast(pipeline.device):
                scores.append(model.scores(pipeline(tiles)).float().cpu())                    # (c,)
    finally:
        for module, mode in modes.items():
            module.training = mode
    flat = torch.cat(scores) if scores else torch.empty(0)
    return list(flat.split([len(p) for p in positions]))


def random_tiles(count: int, keep: int, seed: int) -> torch.Tensor:
    """`keep` of `count` tile indices at random (all when there are fewer), a pure function of `seed`."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:min(keep, count)]


# A sample's seed feeds three draws of a step; each gets its own stream (a seed shared between two draws would
# tie them: the grid's offset would decide which tiles a warm-up step draws)
GRID_STREAM, DRAW_STREAM, AUGMENT_STREAM = 0, 1, 2


def stream_seed(seed: int, stream: int) -> int:
    """A seed for one of a sample's draws, a pure function of (seed, stream)."""
    return int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(seed * 3 + stream)))


@dataclass(frozen=True)
class BagInputs:
    """A batch of whole images -> the model's input for one step: ((B, M', 3, T, T) normalised and augmented tiles on
    the device, counts (B,) of real tiles per bag), no soft targets. M' is the batch's largest bag (at most `keep`).
    Called as cnnlab.training.forward.ImageInputs is: inputs(model, batch, epoch, side); `side` does not apply
    (bag runs train at full tile size)."""

    pipeline: InputPipeline
    tile: int
    overlap: float
    keep: int
    """M: tiles per image a step learns from."""
    score_batch: int
    """Tiles per forward pass of the scoring pass."""
    warmup: int = 0
    """Epochs (from the first) whose steps draw M tiles at random instead of scoring."""

    @property
    def steady_epoch(self) -> int:
        """The first epoch that selects by attention: what most of a run's steps cost (--time measures it)."""
        return self.warmup + 1

    def select(self, model: nn.Module, batch: BagBatch, epoch: int) -> list[list[tuple[int, int]]]:
        """Each image's kept tiles, as (top, left) positions in it: its top M by attention (after the warm-up; all of
        them, unscored, when no image has more than M)."""
        seeds = [int(seed) for seed in batch.seeds]
        positions = [grid(*image_shape(image), self.tile, self.overlap, stream_seed(seed, GRID_STREAM))
                     for image, seed in zip(batch.images, seeds)]
        if all(len(p) <= self.keep for p in positions):
            return positions
        if epoch <= self.warmup:
            chosen = [random_tiles(len(p), self.keep, stream_seed(seed, DRAW_STREAM))
                      for p, seed in zip(positions, seeds)]
        else:
            scores = score_tiles(model, batch.images, positions, self.tile, self.pipeline, self.score_batch)
            chosen = [top_tiles(s, self.keep) for s in scores]
        return [[p[i] for i in c.tolist()] for p, c in zip(positions, chosen)]

    def __call__(self, model: nn.Module, batch: BagBatch, epoch: int, side: int | None = None
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], None]:
        kept = self.select(model, batch, epoch)
        counts = torch.tensor([len(k) for k in kept])
        length = int(counts.max())
        tiles, seeds = [], []
        for image, positions, seed in zip(batch.images, kept, batch.seeds):
            padded = [positions[i % len(positions)] for i in range(length)]  # padding: the bag's own tiles again
            tiles.append(read_tiles(image, padded, self.tile))                              # (M', 3, T, T) uint8
            seeds.append(tile_seeds(stream_seed(int(seed), AUGMENT_STREAM), length))
        x = self.pipeline(torch.cat(tiles), torch.cat(seeds), train=True)                 # (B * M', 3, T, T)
        return (x.view(len(kept), length, *x.shape[1:]), counts.to(x.device)), None
