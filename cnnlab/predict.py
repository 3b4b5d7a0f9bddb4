"""Predict the class of new images with a trained run (the same preprocessing as its evaluation)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from cnnlab.cache import open_cache
from cnnlab.data import ImageDataset, Sample, find_images
from cnnlab.device import resolve_device, resolve_precision
from cnnlab.errors import CnnlabError
from cnnlab.images import DEFAULT_MAX_PIXELS, is_image_file
from cnnlab.inference import collect_logits
from cnnlab.loaders import make_loader
from cnnlab.runfolder import load_model
from cnnlab.transforms import decode_size, eval_transform


def expand_inputs(inputs: list[str | os.PathLike]) -> list[str]:
    """Files as given, and the images inside any folder (recursively, sorted)."""
    paths: list[str] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(find_images(item))
        elif item.is_file():
            if not is_image_file(item):
                raise CnnlabError(f"{item} does not look like an image (suffix {item.suffix!r})")
            paths.append(str(item))
        else:
            raise CnnlabError(f"{item} does not exist; give image files or folders of images")
    if not paths:
        raise CnnlabError(f"no images found in {', '.join(str(i) for i in inputs)}")
    return paths


def predict(run_dir: str | os.PathLike, inputs: list[str | os.PathLike], top_k: int = 3, which: str = "best",
            batch_size: int = 32, device: str = "auto", workers: int = 0, cache: str | None = None,
            verbose: bool = False) -> list[dict]:
    """Top-k classes with probabilities per image: [{path, top: [{class, probability}], error?}].

    `cache` (None = the run's setting): images inside a folder the run's disk cache covers are read
    from it; other files are decoded directly (see cnnlab.cache.open_cache, one_pass).
    """
    model, info = load_model(run_dir, which)
    paths = expand_inputs(inputs)
    top_k = max(1, min(top_k, info.num_classes))
    torch_device = resolve_device(device)
    precision = resolve_precision("auto", torch_device)
    model = model.to(torch_device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    config_path = Path(run_dir) / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    max_pixels = config.get("max_pixels", DEFAULT_MAX_PIXELS)
    source = open_cache(paths, decode_size(info.img_size), cache or config.get("cache", "auto"),
                        cache_dir=config.get("cache_dir"), max_pixels=max_pixels, one_pass=True, verbose=verbose)
    dataset = ImageDataset([Sample(p, 0) for p in paths], eval_transform(info.img_size),
                           decode_size=decode_size(info.img_size), max_pixels=max_pixels, source=source)
    loader = make_loader(dataset, batch_size, workers, train=False, pin_memory=torch_device.type == "cuda")
    logits, _, indices = collect_logits(model, loader, torch_device, precision, "predict", show_progress=verbose)
    results: dict[int, dict] = {i: {"path": p, "top": [], "error": "unreadable image (see warning)"}
                                for i, p in enumerate(paths)}
    if len(indices):
        probabilities = torch.softmax(logits, dim=1)
        values, classes = probabilities.topk(top_k, dim=1)
        for row, index in enumerate(indices.tolist()):
            results[index] = {"path": paths[index], "top": [
                {"class": info.classes[c], "probability": round(float(v), 6)}
                for v, c in zip(values[row].tolist(), classes[row].tolist())]}
    return [results[i] for i in range(len(paths))]
