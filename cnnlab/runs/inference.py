"""A trained run opened for inference: its model on a device, in its precision, and loaders that prepare
images exactly as the run recorded (model.json's preprocessing), reading the run's image cache when one
covers the files. evaluate, predict, inspect and explain all start here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data.cache import open_cache
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample
from cnnlab.data.images import DEFAULT_MAX_PIXELS
from cnnlab.data.loaders import make_loader
from cnnlab.data.transforms import eval_transform
from cnnlab.training.device import default_workers, resolve_device, resolve_precision
from cnnlab.training.forward import InputPipeline, Logits, collect_logits
from cnnlab.runs.reader import RunRecord, load_model


@dataclass
class TrainedModel:
    """A run's model ready to predict: `dataset` and `loader` prepare images as the run recorded,
    `logits` runs the model over a loader."""

    model: nn.Module
    record: RunRecord
    pipeline: InputPipeline
    which: str

    @property
    def max_pixels(self) -> int:
        return self.record.config.max_pixels if self.record.config else DEFAULT_MAX_PIXELS

    def dataset(self, samples: list[Sample], cache: str | None = None, verbose: bool = False) -> ImageDataset:
        """The samples with the run's evaluation preprocessing; decoded images come from the run's disk
        cache when one covers them (`cache`: auto, disk, ram, off; None = the run's setting)."""
        preprocessing = self.record.preprocessing
        config = self.record.config
        mode = cache or (config.cache if config else "auto")
        source = open_cache([sample.path for sample in samples], preprocessing.decode_size, mode,
                            cache_dir=config.cache_dir if config else None, max_pixels=self.max_pixels,
                            one_pass=True, verbose=verbose)
        return ImageDataset(samples, eval_transform(preprocessing), decode_size=preprocessing.decode_size,
                            max_pixels=self.max_pixels, source=source)

    def loader(self, dataset: ImageDataset, batch_size: int = 64, workers: int | None = None) -> DataLoader:
        """An evaluation loader (file order) over `dataset`."""
        return make_loader(dataset, batch_size, default_workers() if workers is None else workers, train=False,
                           pin_memory=self.pipeline.device.type == "cuda")

    def logits(self, loader: DataLoader, description: str = "eval", show_progress: bool = False,
               tta: bool = False) -> Logits:
        """Logits of every readable image of the loader (flip-averaged with `tta`)."""
        return collect_logits(self.model, loader, self.pipeline, description, show_progress=show_progress, tta=tta)


def open_trained(run_dir: str | os.PathLike, which: str = "best", device: str = "auto") -> TrainedModel:
    """Load a run's best (or last) weights onto `device` ('auto': CUDA if available) in its fastest precision."""
    model, record = load_model(run_dir, which)
    torch_device = resolve_device(device)
    precision = resolve_precision("auto", torch_device)
    model = model.to(torch_device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pipeline = InputPipeline(torch_device, precision, mean=record.preprocessing.mean, std=record.preprocessing.std)
    return TrainedModel(model, record, pipeline, which)
