"""Image folders as datasets: find classes and splits, split deterministically, read samples on the fly.

Layouts understood (class names come from folder names; hidden files and folders are ignored):
    ROOT/<class>/*.jpg                          -> stratified train/val split by seed
    ROOT/train/<class>/..., ROOT/val|validation/<class>/..., ROOT/test/<class>/...
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cnnlab.errors import CnnlabError, ImageReadError
from cnnlab.images import DEFAULT_MAX_PIXELS, is_image_file, read_image

# Folder names recognised as splits, and the canonical split they map to.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: str
    label: int


@dataclass
class DatasetSplits:
    """What was found in an image folder: class names and the samples of each split."""

    root: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    split_source: str  # "folders" (train/val/test present) or "seeded split of <folder>"
    ignored: list[str] = field(default_factory=list)  # hidden or non-image entries, for reports

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each split: {split: {class: n}}."""
        table = {}
        for split, samples in self.splits.items():
            per_class = {name: 0 for name in self.classes}
            for sample in samples:
                per_class[self.classes[sample.label]] += 1
            table[split] = per_class
        return table


def _is_hidden(name: str) -> bool:
    # .git, .ipynb_checkpoints, .DS_Store, ._resource forks, __MACOSX (from zip files)
    return name.startswith(".") or name.startswith("__MACOSX")


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted by name (symlinked folders included)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as error:
        raise CnnlabError(f"cannot list {folder}: {error.strerror}") from None
    return [Path(e.path) for e in entries if not _is_hidden(e.name) and e.is_dir()]


def find_images(folder: str | os.PathLike, ignored: list[str] | None = None) -> list[str]:
    """Image files under `folder`, recursively, sorted; symlinks resolved and de-duplicated.

    A symlink loop (a folder linking to its parent) would otherwise repeat samples without end;
    walking by resolved path visits every real folder and file once.
    """
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    found: list[str] = []
    root_real = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        # a link to the folder itself or to one above it (`loop -> ..`) would pull in other
        # classes' images under this class's label: never follow those
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d)
                             and not _links_upwards(os.path.join(dirpath, d), root_real))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if _is_hidden(name) or not is_image_file(name):
                if ignored is not None:
                    ignored.append(path)
                continue
            real_file = os.path.realpath(path)
            if real_file in seen_files:
                continue
            seen_files.add(real_file)
            found.append(path)
    return found


def _links_upwards(path: str, root_real: str) -> bool:
    """True if `path` is a symlink to `root_real` or to a folder containing it."""
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    return root_real == target or root_real.startswith(target.rstrip(os.sep) + os.sep)


def _scan_classes(folder: Path, ignored: list[str]) -> dict[str, list[str]]:
    """{class name: [image paths]} for the class folders directly under `folder`."""
    return {sub.name: find_images(sub, ignored) for sub in _subfolders(folder)}


def stratified_split(samples: list[Sample], val_fraction: float, seed: int
                     ) -> tuple[list[Sample], list[Sample]]:
    """Split each class separately (same share of every class in val), reproducibly by seed."""
    by_label: dict[int, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    train, val = [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda s: s.path)
        random.Random(f"{seed}-{label}").shuffle(group)  # per-class RNG: adding a class moves nothing else
        n_val = round(len(group) * val_fraction)
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)  # keep >= 1 image on each side
        else:
            n_val = 0
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


def find_samples(root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """Scan an image folder and return its classes and train/val(/test) samples."""
    root = Path(root)
    if not root.exists():
        raise CnnlabError(f"data folder {root} does not exist; give a folder with one sub-folder per class "
                          "(make one with `cnnlab data synth DIR`)")
    if not root.is_dir():
        raise CnnlabError(f"data path {root} is a file; give a folder with one sub-folder per class")
    ignored: list[str] = []
    split_dirs = {SPLIT_FOLDERS[p.name.lower()]: p for p in _subfolders(root)
                  if p.name.lower() in SPLIT_FOLDERS}
    if "train" in split_dirs:
        found = {split: _scan_classes(path, ignored) for split, path in split_dirs.items()}
        classes = sorted(name for name, files in found["train"].items())
        source = "folders"
    else:
        if split_dirs:
            raise CnnlabError(f"{root} has {', '.join(sorted(p.name for p in split_dirs.values()))} "
                              "but no train/ folder; add train/<class>/ or put the class folders directly in the root")
        found = {"all": _scan_classes(root, ignored)}
        classes = sorted(found["all"])
        source = f"seeded split (val_fraction={val_fraction}, seed={seed})"
    if len(classes) < 2:
        where = split_dirs.get("train", root)
        raise CnnlabError(f"{where} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
                          "a classifier needs at least two: put each class's images in its own sub-folder")
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[Sample]] = {}
    for split, per_class in found.items():
        unknown = sorted(set(per_class) - set(index))
        if unknown:
            raise CnnlabError(f"{split_dirs[split]} has class folder(s) not in train/: {', '.join(unknown)}; "
                              "every class needs training images")
        splits[split] = [Sample(path, index[name]) for name in sorted(per_class) for path in per_class[name]]
    train_like = "train" if "train" in splits else "all"
    empty = [name for name in classes if not found[train_like].get(name)]
    if empty:
        raise CnnlabError(f"class folder(s) with no images: {', '.join(empty)} in "
                          f"{split_dirs.get('train', root)}; add images or remove the folder "
                          f"(image types read: jpg, png, bmp, gif, webp, tif)")
    if "all" in splits or "val" not in splits:
        pool = splits.pop("all", None) or splits.pop("train")
        splits["train"], splits["val"] = stratified_split(pool, val_fraction, seed)
        if source == "folders":
            source = f"train/ folder, val split from it (val_fraction={val_fraction}, seed={seed})"
    return DatasetSplits(str(root), classes, dict(sorted(splits.items(), key=lambda kv: _split_order(kv[0]))),
                         source, ignored)


def _split_order(split: str) -> int:
    return {"train": 0, "val": 1, "test": 2}.get(split, 3)


class ImageDataset(Dataset):
    """Reads and transforms each image when it is asked for (augmentation is fresh on every read).

    An unreadable file yields None (dropped by `collate_skip_bad`) and is reported once, by path.
    """

    def __init__(self, samples: list[Sample], transform, decode_size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, source=None):
        self.samples = samples
        self.transform = transform
        self.decode_size = decode_size
        self.max_pixels = max_pixels
        # Optional: an object whose load(index) gives the decoded image of samples[index], e.g. the
        # resolution cache (cnnlab.cache.CachedImages); None decodes the file on every read.
        self.source = source
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """The decoded uint8 image (3, H, W), before any transform."""
        if self.source is not None:
            return self.source.load(index)
        sample = self.samples[index]
        return read_image(sample.path, min_size=self.decode_size, max_pixels=self.max_pixels)

    def __getitem__(self, key):
        """key: an index, or (index, seed) from EpochSampler so augmentation is reproducible."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        try:
            image = self.load(index)
        except ImageReadError as error:
            if sample.path not in self._warned:
                self._warned.add(sample.path)
                print(f"warning: skipping {error.path}: {error.reason}", file=sys.stderr)
            return None
        if seed is None:
            return self.transform(image), sample.label, index
        # fork_rng: seed the random transforms without touching the caller's RNG (dropout, shuffling)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), sample.label, index


def collate_skip_bad(batch):
    """Stack a batch after dropping unreadable samples (None): images (N, 3, H, W), labels (N,),
    indices (N,) into dataset.samples, so callers know which files were read."""
    good = [item for item in batch if item is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return images, labels, indices
