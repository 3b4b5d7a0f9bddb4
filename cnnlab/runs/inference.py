"""A trained run opened for inference: its model on a device, in its precision, and loaders that prepare
images exactly as the run recorded (model.json's preprocessing), reading the run's image cache when one
covers the files. evaluate, predict, inspect and explain all start here.
"""

from __future__ import annotations

import dataclasses
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
from cnnlab.data.transforms import Preprocessing
from cnnlab.training.device import default_workers, resolve_device, resolve_precision
from cnnlab.training.forward import InputPipeline, Logits, view_logits
from cnnlab.runs.reader import RunRecord, load_model


@dataclass
class TrainedModel:
    """A run's model ready to predict: `dataset` and `loader` prepare images as the run recorded,
    `logits` runs the model over a loader."""

    model: nn.Module
    record: RunRecord
    pipeline: InputPipeline
    which: str
    tiles: Preprocessing | None = None
    """A sliding-window preprocessing that replaces the run's own (with_tiles); None: the run's."""
    pixel_cap: int | None = None
    """Images with more pixels are refused from their header; None: the run's --max-pixels (an exported file
    carries its own)."""

    @property
    def max_pixels(self) -> int:
        if self.pixel_cap is not None:
            return self.pixel_cap
        return self.record.config.max_pixels if self.record.config else DEFAULT_MAX_PIXELS

    @property
    def preprocessing(self) -> Preprocessing:
        return self.tiles or self.record.preprocessing

    def dataset(self, samples: list[Sample], cache: str | None = None, verbose: bool = False,
                warn: bool = True) -> ImageDataset:
        """The samples with the run's evaluation preprocessing (tiled runs: the whole image at the run's scale);
        decoded images come from the run's disk cache when one covers them (`cache`: auto, disk, ram, off;
        None = the run's setting). `warn`: one line per unreadable file (off where the caller reports each)."""
        view = self.preprocessing
        config = self.record.config
        mode = cache or (config.cache if config else "auto")
        source = open_cache([sample.path for sample in samples], view.resolution, mode,
                            cache_dir=config.cache_dir if config else None, max_pixels=self.max_pixels,
                            one_pass=True, verbose=verbose)
        return ImageDataset(samples, view.eval_transform(), view.resolution, max_pixels=self.max_pixels,
                            source=source, warn=warn)

    def loader(self, dataset: ImageDataset, batch_size: int = 64, workers: int | None = None) -> DataLoader:
        """An evaluation loader (file order) over `dataset`; one whole image per batch for tiled prediction."""
        return make_loader(dataset, self.preprocessing.images_per_batch(batch_size),
                           default_workers() if workers is None else workers, train=False,
                           pin_memory=self.pipeline.device.type == "cuda")

    def logits(self, loader: DataLoader, description: str = "eval", show_progress: bool = False,
               tta: bool = False, on_image=None) -> Logits:
        """Logits of every readable image of the loader (flip-averaged with `tta`), as the view scores it (tiled:
        the sliding window pooled as the run pools it, `on_image(index, windows)` seeing each image's Windows)."""
        return view_logits(self.model, loader, self.pipeline, self.preprocessing, description,
                           show_progress=show_progress, tta=tta, on_image=on_image)

    def with_tiles(self, scale: float | None = None, overlap: float | None = None,
                   aggregate: str | None = None) -> "TrainedModel":
        """The same model predicting by a sliding window: the run's own tiles (and scale, overlap, aggregate
        unless given), or for a whole-image run windows of its input size at `scale`."""
        pre = self.record.preprocessing
        tile = pre.tile or self.record.img_size
        tiles = dataclasses.replace(Preprocessing.for_tiles(
            tile, scale if scale is not None else pre.scale, overlap if overlap is not None else pre.overlap,
            aggregate or pre.aggregate, pre.bag_tiles), mean=pre.mean, std=pre.std)
        return dataclasses.replace(self, tiles=tiles)


def open_trained(run_dir: str | os.PathLike, which: str = "best", device: str = "auto") -> TrainedModel:
    """Load a run's best (or last) weights onto `device` ('auto': CUDA if available), computing in float32.

    Always float32, never the bf16 a CPU with AMX would train in: a run, its exported ONNX file (float32) and
    serve must give one image the same probabilities, and bf16 moves them by points, enough to flip a top-1."""
    model, record = load_model(run_dir, which)
    torch_device = resolve_device(device)
    precision = resolve_precision("fp32", torch_device)
    model = model.to(torch_device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pipeline = InputPipeline(torch_device, precision, mean=record.preprocessing.mean, std=record.preprocessing.std)
    return TrainedModel(model, record, pipeline, which)
