"""Image folders: which files are trained on (the one folder walk), their classes and splits.

Layouts understood (class names come from folder names; hidden files and folders are ignored):
    ROOT/<class>/*.jpg                          -> stratified train/val split by seed
    ROOT/train/<class>/..., ROOT/val|validation/<class>/..., ROOT/test/<class>/...
    labels.csv (or ROOT/labels.csv) of path,label[,split]  -> the same, from a label file (cnnlab.data.labels)

Paths are absolute, so a run folder that records them works from any working directory.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from cnnlab.data.images import IMAGE_EXTENSIONS, is_image_file
from cnnlab.data.labels import ROW_PROBLEMS, label_file, read_labels
from cnnlab.errors import CnnlabError

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

    root: str  # the image folder, or the label file (a CSV)
    classes: list[str]
    splits: dict[str, list[Sample]]
    split_source: str  # "folders" (train/val/test present), "seeded split (...)", ...: where the splits came from
    notes: list[WalkNote] = field(default_factory=list)  # what the walk (or the label file) left out, for reports

    @property
    def ignored(self) -> list[str]:
        """Hidden or non-image files inside the class folders, which are not trained on."""
        return [n.path for n in self.notes if n.problem in ("hidden-ignored", "ignored-file")]

    @property
    def skipped_rows(self) -> list[WalkNote]:
        """Rows of a label file left out (missing file, empty label, unknown split, ...); `cnnlab data check`
        lists them."""
        return [n for n in self.notes if n.severity == "error" and n.problem in ROW_PROBLEMS]

    def only(self, *names: str) -> "DatasetSplits":
        """The same folder with just these splits (e.g. the training images alone, for a look or a test run)."""
        return replace(self, splits={name: self.splits[name] for name in names})

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


def safe_path(path: str | bytes | os.PathLike) -> str:
    """A path that prints anywhere: bytes that are not UTF-8 are shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _is_utf8(name: str) -> bool:
    # os.listdir decodes undecodable bytes to lone surrogates (surrogateescape); those fail here.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def visible_subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted by name (symlinked folders included)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as error:
        raise CnnlabError(f"cannot list {folder}: {error.strerror}") from None
    return [Path(e.path) for e in entries if not _is_hidden(e.name) and e.is_dir()]


@dataclass(frozen=True)
class WalkNote:
    """Something the walk skipped, read once or resolved, worth telling the user (`cnnlab data check`)."""

    path: str
    severity: str  # "warning" or "info"
    problem: str  # hidden-ignored, ignored-file, symlink-loop, symlink-duplicate, symlink-resolved, non-utf8-name;
    # for a label file's rows: cnnlab.data.labels.ROW_PROBLEMS and duplicate-row
    detail: str


@dataclass
class Walk:
    """The image files under a folder, as training reads them, and what the walk left out and why."""

    images: list[str]
    notes: list[WalkNote]


def walk_images(folder: str | os.PathLike) -> Walk:
    """The one walk that decides which files are trained on: image files under `folder`, recursively,
    sorted, each real folder and file visited once, with a note for everything left out.

    A symlink loop (a folder linking to itself or a folder above it) would pull in other classes'
    images under this class's label, or repeat samples without end: such links are never followed.
    """
    folder = os.fspath(folder)
    root_real = os.path.realpath(folder)
    seen_dirs: set[str] = set()
    seen_files: dict[str, str] = {}
    images: list[str] = []
    notes: list[WalkNote] = []

    def note(path: str, severity: str, problem: str, detail: str) -> None:
        notes.append(WalkNote(path, severity, problem, detail))

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            note(dirpath, "warning", "symlink-duplicate", f"same folder as {safe_path(real)}, already read; read once")
            continue
        seen_dirs.add(real)
        visible = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            if not _is_utf8(name):
                note(path, "warning", "non-utf8-name", "folder name is not valid UTF-8 (shown with \\x escapes); "
                     "it is read, but other tools may fail on it")
            if _is_hidden(name):
                inside = sum(is_image_file(f) for _, _, files in os.walk(path) for f in files)
                note(path + os.sep, "warning", "hidden-ignored",
                     f"hidden folder ignored ({inside} image file(s) inside are not used)")
                continue
            if os.path.islink(path):
                target = os.path.realpath(path)
                if root_real == target or root_real.startswith(target.rstrip(os.sep) + os.sep) \
                        or real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                    note(path, "warning", "symlink-loop", f"links to {safe_path(target)}, a folder above it: not "
                         "followed (it would read other classes' images under this class); remove the link")
                    continue
                if target not in seen_dirs:
                    note(path, "info", "symlink-resolved", f"folder link to {safe_path(target)}")
            visible.append(name)
        dirnames[:] = visible
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not _is_utf8(name):
                note(path, "warning", "non-utf8-name", "file name is not valid UTF-8 (shown with \\x escapes); it "
                     "is read, but other tools may fail on it: rename it")
            if _is_hidden(name):
                note(path, "warning", "hidden-ignored", "hidden file ignored")
                continue
            if not is_image_file(name):
                note(path, "warning", "ignored-file",
                     f"not an image type cnnlab reads ({', '.join(IMAGE_EXTENSIONS)}); ignored")
                continue
            target = os.path.realpath(path)
            if target in seen_files:
                note(path, "warning", "symlink-duplicate", f"same file as {safe_path(seen_files[target])}; read once")
                continue
            seen_files[target] = path
            if os.path.islink(path):
                note(path, "info", "symlink-resolved", f"file link to {safe_path(target)}")
            images.append(path)
    return Walk(images, notes)


def find_images(folder: str | os.PathLike) -> list[str]:
    """Image files under `folder` as training reads them (see walk_images)."""
    return walk_images(folder).images


def _scan_classes(folder: Path, notes: list[WalkNote]) -> dict[str, list[str]]:
    """{class name: [image paths]} for the class folders directly under `folder`."""
    found = {}
    for sub in visible_subfolders(folder):
        walk = walk_images(sub)
        found[sub.name] = walk.images
        notes.extend(walk.notes)
    return found


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
    """Scan an image folder, or read a label file (a CSV of path,label[,split], or a folder holding labels.csv),
    and return its classes and train/val(/test) samples."""
    table = label_file(root)
    if table is not None:
        return _label_file_samples(Path(os.path.abspath(table)), val_fraction, seed)
    root = Path(os.path.abspath(root))  # absolute: a run folder must work from any directory
    if not root.exists():
        raise CnnlabError(f"data folder {root} does not exist; give a folder with one sub-folder per class "
                          "(make one with `cnnlab data synth DIR`)")
    if not root.is_dir():
        raise CnnlabError(f"data path {root} is a file; give a folder with one sub-folder per class, or a CSV of "
                          "path,label[,split] (a .csv file)")
    notes: list[WalkNote] = []
    split_dirs = {SPLIT_FOLDERS[p.name.lower()]: p for p in visible_subfolders(root)
                  if p.name.lower() in SPLIT_FOLDERS}
    if "train" in split_dirs:
        found = {split: _scan_classes(path, notes) for split, path in split_dirs.items()}
        classes = sorted(name for name, files in found["train"].items())
    else:
        if split_dirs:
            raise CnnlabError(f"{root} has {', '.join(sorted(p.name for p in split_dirs.values()))} "
                              "but no train/ folder; add train/<class>/ or put the class folders directly in the root")
        found = {"all": _scan_classes(root, notes)}
        classes = sorted(found["all"])
    if len(classes) < 2:
        where = split_dirs.get("train", root)
        raise CnnlabError(f"{where} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
                          "a classifier needs at least two: put each class's images in its own sub-folder")
    for split, per_class in found.items():
        unknown = sorted(set(per_class) - set(classes))
        if unknown:
            raise CnnlabError(f"{split_dirs[split]} has class folder(s) not in train/: {', '.join(unknown)}; "
                              "every class needs training images")
    train_like = "train" if "train" in found else "all"
    empty = [name for name in classes if not found[train_like].get(name)]
    if empty:
        raise CnnlabError(f"class folder(s) with no images: {', '.join(empty)} in "
                          f"{split_dirs.get('train', root)}; add images or remove the folder "
                          f"(image types read: jpg, png, bmp, gif, webp, tif)")
    return labelled_splits(str(root), classes, found, val_fraction, seed, given="folders", train_from="train/ folder",
                           notes=notes)


def _label_file_samples(file: Path, val_fraction: float, seed: int) -> DatasetSplits:
    """find_samples of a label file: its usable rows as splits, the rows left out as notes."""
    table = read_labels(file, SPLIT_FOLDERS)
    notes = [WalkNote(n.path, n.severity, n.problem, n.detail) for n in table.notes]
    left_out = sum(n.severity == "error" for n in table.notes)
    if not table.found:
        raise CnnlabError(f"label file {file} has no usable row ({left_out} left out; `cnnlab data check {file}` "
                          "says why); each row needs the path of an image file and its label")
    if table.has_splits and "train" not in table.found:
        raise CnnlabError(f"label file {file} has no row with split train (it has: {', '.join(table.found)}); "
                          "every class needs training images")
    classes = sorted(table.found["train" if table.has_splits else "all"])
    if len(classes) < 2:
        raise CnnlabError(f"label file {file} has {len(classes)} label(s) with usable training rows "
                          f"({', '.join(classes) or 'none'}); a classifier needs at least two")
    return labelled_splits(str(file), classes, table.found, val_fraction, seed,
                           given=f"split column of {file.name}", train_from=f"train rows of {file.name}", notes=notes)


def labelled_splits(root: str, classes: list[str], found: dict[str, dict[str, list[str]]], val_fraction: float,
                    seed: int, given: str, train_from: str, notes: list[WalkNote]) -> DatasetSplits:
    """DatasetSplits from {split: {class: [paths]}} ("all": no split given), folders' and label files' alike:
    without a val split, one is held out of the training images by stratified_split (the one automatic rule).
    `given` names where the splits came from; `train_from` the training images a val split is held out of."""
    index = {name: i for i, name in enumerate(classes)}
    splits = {split: [Sample(path, index[name]) for name in sorted(per_class) for path in per_class[name]]
              for split, per_class in found.items()}
    seeded = f"val_fraction={val_fraction}, seed={seed}"
    source = given
    if "all" in splits or "val" not in splits:
        source = f"seeded split ({seeded})" if "all" in splits else f"{train_from}, val split from it ({seeded})"
        pool = splits.pop("all", None) or splits.pop("train")
        splits["train"], splits["val"] = stratified_split(pool, val_fraction, seed)
    return DatasetSplits(root, classes, dict(sorted(splits.items(), key=lambda kv: _split_order(kv[0]))),
                         source, notes)


def _split_order(split: str) -> int:
    return {"train": 0, "val": 1, "test": 2}.get(split, 3)


def expand_inputs(inputs: list[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """What a user listed to predict or explain, as (path, None) for each image file given or found in a given
    folder (recursively, sorted), and (path, reason) for an input that cannot be read as an image before trying.
    Paths are normalised (``photos//a.jpg`` and ``./photos/a.jpg`` print as ``photos/a.jpg``)."""
    found: list[tuple[str, str | None]] = []
    for item in inputs:
        path = Path(os.path.normpath(os.fspath(item)))
        if path.is_dir():
            images = [os.path.normpath(image) for image in find_images(path)]
            found.extend((image, None) for image in images)
            if not images:
                found.append((str(path), f"no image files in this folder ({', '.join(IMAGE_EXTENSIONS)})"))
        elif path.is_file():
            if is_image_file(path):
                found.append((str(path), None))
            else:
                found.append((str(path), f"not an image file type (suffix {path.suffix or 'none'!r}; "
                                         f"read: {', '.join(IMAGE_EXTENSIONS)})"))
        elif path.exists():
            found.append((str(path), "not a file or folder (a device, socket or pipe?)"))
        else:
            found.append((str(path), "no such file or folder"))
    return found
