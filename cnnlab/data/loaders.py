"""DataLoaders whose randomness is a pure function of (seed, epoch, position), built complete in one place.

The training sampler yields (index, sample_seed) pairs; the dataset seeds each image's random crop with
sample_seed and the batch augmentation on the device draws from the same seeds. So the images of epoch e
are the same whatever the number of workers or processes, and a run resumed at epoch e (another process,
other workers) sees exactly the batches it would have seen. Sharding over processes (DDP) is slicing
the one permutation: rank r of W takes every W-th position, so the union of the ranks' k-th batches is
the k-th global batch of a single-process run.

Every loader is built by `make_loader`, complete: sampler -> SkipIndices (leaves out files found
unreadable, cnnlab.data.unreadable) -> BatchSampler, its own generator, workers that leave signals to
the main process. Nothing patches it afterwards.
"""

from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from cnnlab.data.dataset import ImageDataset
from cnnlab.signals import leave_signals_to_parent

PREFETCH_FACTOR = 4  # batches each worker prepares ahead (what a worker holds in memory at most)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A torch.Generator seeded from (seed, epoch, stream) only."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + epoch) * 7919 + stream)
    return generator


class EpochSampler(Sampler):
    """Shuffled (index, sample_seed) pairs for one epoch, this rank's share; call set_epoch before each epoch.

    With `weights` (one per sample), the epoch's `size` indices are drawn with replacement in proportion
    to them (--balance sampler: rare classes are seen as often as common ones), still from (seed, epoch).
    Indices in `skip` (files found unreadable) are left out before the permutation is shared between the
    ranks, so every rank gets its share of the same kept list. With several ranks, a last global batch
    smaller than the number of ranks is dropped, so that every rank has the same number of batches (DDP
    needs every rank in every step); with one rank nothing is dropped.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None, batch_size: int = 1, draws: torch.Tensor | None = None):
        self.size = size
        # draws: how many times an epoch visits each sample (tiled runs: the tiles its image holds), each visit
        # with its own seed; None = once each (then the epoch is exactly a permutation of 0..size-1)
        self.draws = draws
        self.total = int(draws.sum()) if draws is not None else size
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        self.weights = weights
        self.batch_size = batch_size  # the global batch (all ranks together)
        self.skip: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = epoch_generator(self.seed, self.epoch)
        if self.weights is None:
            order = torch.randperm(self.total, generator=generator)
            if self.draws is not None:  # positions of the visits -> their samples
                order = torch.repeat_interleave(torch.arange(self.size), self.draws)[order]
        else:
            weights = self.weights if self.draws is None else self.weights * self.draws
            order = torch.multinomial(weights, self.total, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**62, (self.total,), generator=generator)
        if self.skip:
            keep = torch.tensor([int(i) not in self.skip for i in order], dtype=torch.bool)
            order, seeds = order[keep], seeds[keep]
        count = len(order)
        tail = count % self.batch_size
        if self.world_size > 1 and 0 < tail < self.world_size:
            order, seeds = order[:count - tail], seeds[:count - tail]
        return order, seeds

    def __iter__(self):
        order, seeds = self._kept()
        for position in range(self.rank, len(order), self.world_size):
            yield int(order[position]), int(seeds[position])

    def __len__(self) -> int:
        return len(range(self.rank, len(self._kept()[0]), self.world_size))


class ShardIndices(Sampler):
    """Evaluation order: this rank's share of 0..size-1 minus `skip` (every index exactly once over all ranks)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.skip: set[int] = set()

    def _kept(self) -> list[int]:
        return [i for i in range(self.size) if i not in self.skip]

    def __iter__(self):
        return iter(self._kept()[self.rank::self.world_size])

    def __len__(self) -> int:
        return len(self._kept()[self.rank::self.world_size])


def samples_per_epoch(loader: DataLoader) -> int:
    """Images (or tiles) one epoch of a training loader draws over all ranks; an evaluation loader's images."""
    base = skip_sampler(loader).sampler
    return base.total if isinstance(base, EpochSampler) else base.size


def _index(item) -> int:
    # EpochSampler yields (index, augmentation seed); ShardIndices plain indices
    return item[0] if isinstance(item, tuple) else item


class SkipIndices(Sampler):
    """Another sampler's items from the `start`-th on, the sampler leaving out `skip`; remembers what it yielded.

    cnnlab.data.unreadable sets `skip` (files found unreadable in earlier epochs) and `start` (resuming in
    the middle of an epoch) before each pass, and compares `yielded` with what came back.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.start = 0
        self.yielded: list[int] = []

    @property
    def skip(self) -> set[int]:
        return self.sampler.skip

    @skip.setter
    def skip(self, indices: set[int]) -> None:
        self.sampler.skip = set(indices)  # left out before the ranks share the order

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int | None:
        return getattr(self.sampler, "epoch", None)

    def __iter__(self):
        self.yielded = []
        for item in islice(iter(self.sampler), self.start, None):
            self.yielded.append(_index(item))
            yield item

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, *, train: bool, seed: int = 0,
                pin_memory: bool = False, rank: int = 0, world_size: int = 1,
                sample_weights: torch.Tensor | None = None, draws: torch.Tensor | None = None) -> DataLoader:
    """Training loader (EpochSampler) or evaluation loader (file order), this rank's share, complete.

    `batch_size` is this process's batch (the global batch / world_size); `sample_weights` (training) draws
    samples in proportion to them; `draws` (training): visits of each sample per epoch (default once).
    The loader's own generator (seeded by `seed`) gives the workers
    their base seed: a DataLoader otherwise draws it from torch's global generator when an iterator
    starts, which would shift dropout's random numbers in a resumed run.
    """
    base = EpochSampler(len(dataset), seed, rank, world_size, sample_weights, batch_size=batch_size * world_size,
                        draws=draws) \
        if train else ShardIndices(len(dataset), rank, world_size)
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(SkipIndices(base), batch_size, drop_last=False),
        num_workers=workers,
        collate_fn=dataset.collate,  # stacked crops or tiles (collate_skip_bad), or a list of whole images (bags)
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
        # Ctrl-C, `timeout`, `kill -- -PGID`, systemd and Slurm signal the whole process group: a worker killed
        # by it would end the run with "DataLoader worker ... killed by signal" instead of a checkpoint
        worker_init_fn=leave_signals_to_parent if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def skip_sampler(loader: DataLoader) -> SkipIndices:
    """The SkipIndices that make_loader put between the sampler and the batches."""
    return loader.batch_sampler.sampler


def loader_batch_size(loader: DataLoader) -> int:
    """Images per batch of a loader made by make_loader."""
    return loader.batch_sampler.batch_size
