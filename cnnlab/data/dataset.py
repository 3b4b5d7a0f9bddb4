"""The on-the-fly dataset: read one image (from the cache or the file), apply its per-image transform,
hand back uint8 pixels. Normalisation and batch augmentation happen later, on the training device.

Each item is (image (3, S, S) uint8, label, index into samples, augmentation seed). The seed comes from
the sampler (cnnlab.data.loaders.EpochSampler), so the random crop of an image is a pure function of
(seed, epoch, position), whatever worker reads it; the batch augmentation on the device draws from the
same per-image seeds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from cnnlab.data.folders import Sample
from cnnlab.data.images import DEFAULT_MAX_PIXELS, read_at
from cnnlab.errors import ImageReadError


class ImageDataset(Dataset):
    """Reads and transforms each image when it is asked for (random transforms are fresh on every read).

    An unreadable file yields None (dropped by `collate_skip_bad`) and is reported once, by path.
    """

    def __init__(self, samples: list[Sample], transform, resolution: int | float,
                 max_pixels: int = DEFAULT_MAX_PIXELS, source=None, warn: bool = True):
        self.samples = samples
        self.transform = transform  # uint8 (3, H, W) -> uint8 (3, S, S)
        # read_at's resolution: the short side the transforms start from (int), or for tiled runs the pixel
        # scale whole images are read at (float)
        self.resolution = resolution
        self.max_pixels = max_pixels
        # Optional: an object whose load(index) gives the decoded image of samples[index], e.g. the
        # resolution cache (cnnlab.data.cache.CachedImages), which holds read_at's very pixels; None
        # decodes the file on every read.
        self.source = source
        # warn: print one line per unreadable file; off where the caller reports each one itself (predict's rows)
        self.warn = warn
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def collate(items) -> "Batch":
        """How a loader batches this dataset's items: stacked, unreadable ones dropped (collate_skip_bad)."""
        return collate_skip_bad(items)

    def load(self, index: int) -> torch.Tensor:
        """The decoded uint8 image (3, H, W), before any transform: the same pixels from the cache or the file."""
        if self.source is not None:
            return self.source.load(index)
        return read_at(self.samples[index].path, self.resolution, max_pixels=self.max_pixels)

    def __getitem__(self, key):
        """key: an index, or (index, seed) from EpochSampler so the random transforms are reproducible."""
        index, seed = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        try:
            image = self.load(index)
        except ImageReadError as error:
            if self.warn and sample.path not in self._warned:
                self._warned.add(sample.path)
                print(f"warning: skipping {error.path}: {error.reason}", file=sys.stderr)
            return None
        # fork_rng: seed the random transforms without touching the caller's RNG (dropout, shuffling)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), sample.label, index, seed


@dataclass
class Batch:
    """A collated batch: images (N, 3, S, S) uint8, labels (N,), indices (N,) into dataset.samples (so
    callers know which files were read) and seeds (N,) for the per-image batch augmentation."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    seeds: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def pin_memory(self) -> "Batch":
        """Page-locked copies for asynchronous host-to-GPU transfer (the DataLoader calls this)."""
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices, self.seeds)


def collate_skip_bad(items) -> Batch:
    """Stack a batch after dropping unreadable samples (None)."""
    good = [item for item in items if item is not None]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), empty, empty, empty)
    return Batch(torch.stack([item[0] for item in good]),
                 torch.tensor([item[1] for item in good], dtype=torch.long),
                 torch.tensor([item[2] for item in good], dtype=torch.long),
                 torch.tensor([item[3] for item in good], dtype=torch.long))
