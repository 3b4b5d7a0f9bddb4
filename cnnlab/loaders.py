"""DataLoaders whose randomness is a pure function of (seed, epoch, position).

The training sampler yields (index, sample_seed) pairs; the dataset seeds the augmentation of each
image with sample_seed. So the images of epoch e are the same whatever the number of workers, and a
run resumed at epoch e (another process, other workers) sees exactly the batches it would have seen.
The same property makes sharding over processes (DDP) a matter of slicing the permutation.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from cnnlab.data import ImageDataset, collate_skip_bad


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A torch.Generator seeded from (seed, epoch, stream) only."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + epoch) * 7919 + stream)
    return generator


class EpochSampler(Sampler):
    """Shuffled (index, sample_seed) pairs for one epoch; call set_epoch before each epoch."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.size, generator=generator)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        for position in range(self.rank, self.size, self.world_size):
            yield int(order[position]), int(seeds[position])

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, train: bool, seed: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """Training loader (EpochSampler, drop nothing) or evaluation loader (file order)."""
    sampler = EpochSampler(len(dataset), seed) if train else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skip_bad,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
