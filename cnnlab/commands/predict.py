"""Predict the class of new images with a trained run (the same preprocessing as its evaluation).

Every input gets a row: its top-k classes, or the reason it could not be predicted (a missing path, a
file that is not an image, a damaged image). One bad file never stops the others.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample, find_images
from cnnlab.data.images import IMAGE_EXTENSIONS, is_image_file
from cnnlab.errors import CnnlabError, ImageReadError
from cnnlab.runs.inference import open_trained


def expand_inputs(inputs: list[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """(path, None) for each image file given or found in a given folder (recursively, sorted), and
    (path, reason) for an input that cannot be predicted before reading it."""
    found: list[tuple[str, str | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = find_images(path)
            found.extend((image, None) for image in images)
            if not images:
                found.append((str(path), f"no image files in this folder ({', '.join(IMAGE_EXTENSIONS)})"))
        elif path.is_file():
            if is_image_file(path):
                found.append((str(path), None))
            else:
                found.append((str(path), f"not an image file type (suffix {path.suffix or 'none'!r}; "
                                         f"read: {', '.join(IMAGE_EXTENSIONS)})"))
        else:
            found.append((str(path), "no such file or folder"))
    return found


def _read_error(dataset: ImageDataset, index: int) -> str:
    """Why the image at `index` could not be read (read once more here: the worker only printed it)."""
    try:
        dataset.load(index)
    except ImageReadError as error:
        return error.reason
    return "could not be read while predicting"


def predict(run_dir: str | os.PathLike, inputs: list[str | os.PathLike], top_k: int = 3, which: str = "best",
            batch_size: int = 32, device: str = "auto", workers: int = 0, cache: str | None = None,
            tta: bool = False, verbose: bool = False) -> list[dict]:
    """One row per input image, in order: {"path", "top": [{"class", "probability"}]} or {"path", "error"}.

    Folders are expanded to the images inside. `cache` (None = the run's setting): images inside a folder
    the run's disk cache covers are read from it. `tta`: average with the mirrored image. Check the rows
    with `check_failures` to apply the run's --max-bad.
    """
    trained = open_trained(run_dir, which, device)
    top_k = max(1, min(top_k, trained.record.num_classes))
    expanded = expand_inputs(inputs)
    rows: list[dict] = [{"path": path, "error": reason} if reason else {"path": path} for path, reason in expanded]
    readable = [k for k, (_, reason) in enumerate(expanded) if reason is None]
    if readable:
        dataset = trained.dataset([Sample(expanded[k][0], 0) for k in readable], cache, verbose)
        outputs = trained.logits(trained.loader(dataset, batch_size, workers), "predict", show_progress=verbose,
                                 tta=tta)
        probabilities = torch.softmax(outputs.logits, dim=1) if len(outputs.indices) else None
        done = set()
        if probabilities is not None:
            values, classes = probabilities.topk(top_k, dim=1)
            for row, index in enumerate(outputs.indices.tolist()):
                done.add(index)
                rows[readable[index]]["top"] = [
                    {"class": trained.record.classes[c], "probability": round(float(v), 6)}
                    for v, c in zip(values[row].tolist(), classes[row].tolist())]
        for index in range(len(readable)):
            if index not in done:
                rows[readable[index]]["error"] = _read_error(dataset, index)
    return rows


def check_failures(rows: list[dict], max_bad: float) -> None:
    """CnnlabError when more than `max_bad` of the inputs could not be predicted."""
    failed = [row for row in rows if "error" in row]
    if rows and len(failed) > max_bad * len(rows):
        example = failed[0]
        raise CnnlabError(f"{len(failed)} of {len(rows)} inputs could not be predicted, more than --max-bad "
                          f"{max_bad:g} allows (e.g. {example['path']}: {example['error']}); check the paths, or "
                          "run `cnnlab data check` on the folder")
