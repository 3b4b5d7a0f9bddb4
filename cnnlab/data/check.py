"""Check an image folder before training: what is there, what cannot be read, what will surprise you.

    report = check_dataset("photos/")            # same as `cnnlab data check photos/`
    print(report.describe()); report.exit_code   # 0: trainable, 1: not

The files are those training reads (cnnlab.data.folders.walk_images, the one folder walk, whose notes
say what it left out; for a label file, cnnlab.data.labels: its usable rows, and the rows it leaves out as
errors). Every image is decoded in parallel through cnnlab.data.images (the reader training uses), hashed
(its bytes), shrunk to a grey thumbnail (on which near-duplicates are found) and measured; cnnlab.data.findings turns the facts into findings. Severities: fatal (the layout cannot be
trained), error (a file cannot be read), warning (duplicates and near-duplicates, label conflicts,
train/val/test leakage, format and size outliers, blank images, class imbalance, empty classes, ignored
hidden files, symlink loops, non-UTF-8 names) and info (read fine after a conversion: CMYK, 16-bit,
palette, alpha, grayscale, EXIF turn, multi-frame). Nothing is ever deleted or rewritten; with
`quarantine`, unreadable files are moved aside.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated

from tqdm import tqdm

from cnnlab.config import Help
from cnnlab.data.findings import (COPY_PROBLEMS, FileFacts, duplicate_findings, imbalance_finding,
                                  outlier_findings)
from cnnlab.data.folders import SPLIT_FOLDERS, _is_hidden, find_samples, safe_path, walk_images
from cnnlab.data.images import DEFAULT_MAX_PIXELS, ImageInfo, image_header, inspect_image
from cnnlab.data.labels import ROW_PROBLEMS, label_file, read_labels
from cnnlab.errors import CnnlabError

SEVERITIES = ("fatal", "error", "warning", "info")
CSV_COLUMNS = ("path", "split", "class", "severity", "problem", "detail")
_SHOWN_PER_PROBLEM = 8  # describe() lists this many files (or copy findings) per problem kind; the CSV has them all


@dataclass(frozen=True)
class Problem:
    """One finding, with the file it is about (the path as found under the checked folder, printable)."""

    path: str
    split: str  # "train", "val", "test", "all" (no split folders) or "" (not inside a split)
    class_name: str  # "" when not inside a class folder
    severity: str  # one of SEVERITIES
    problem: str  # short code, e.g. "truncated-or-corrupt", "split-leakage", "hidden-ignored"
    detail: str

    def row(self) -> dict[str, str]:
        """The CSV row (column "class" rather than the attribute name)."""
        return {"path": self.path, "split": self.split, "class": self.class_name,
                "severity": self.severity, "problem": self.problem, "detail": self.detail}


@dataclass
class DataReport:
    """What `check_dataset` found: counts, sizes, problems, what moved, and whether training can start."""

    root: str
    layout: str  # how cnnlab will split it, as find_samples says (or why it cannot)
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # {split: {class: readable images}}
    unreadable: dict[str, dict[str, int]] = field(default_factory=dict)  # {split: {class: unreadable}}
    sizes: dict[str, dict[str, float]] = field(default_factory=dict)  # {width|height|megapixels: {min, median, max}}
    formats: dict[str, int] = field(default_factory=dict)  # {"TIFF 16-bit 1-channel": readable images}, most first
    problems: list[Problem] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (from, to), printable
    usable: bool = False  # trainable: layout fine, >= 2 classes with readable images, no unreadable file left
    reasons: list[str] = field(default_factory=list)  # why not usable

    @property
    def exit_code(self) -> int:
        """0 when the data can be trained on as it now is, else 1."""
        return 0 if self.usable else 1

    def severity_counts(self) -> dict[str, int]:
        """Number of problems of each severity."""
        return {severity: sum(p.severity == severity for p in self.problems) for severity in SEVERITIES}

    def to_dict(self) -> dict:
        """Plain JSON-able dict (problems as CSV-style rows)."""
        data = asdict(self)
        data["problems"] = [p.row() for p in self.problems]
        data["severity_counts"] = self.severity_counts()
        data["exit_code"] = self.exit_code
        return data

    def describe(self) -> str:
        """Human summary: counts table, sizes, problems grouped by kind, quarantine moves, verdict."""
        lines = [f"Data check of {self.root}", f"  layout: {self.layout}"]
        if self.classes and self.counts:
            splits = list(self.counts)
            width = max(len(name) for name in self.classes + ["class"])
            lines.append("  readable images per class:")
            lines.append("    " + "class".ljust(width) + "".join(f"{s:>9}" for s in splits))
            for name in self.classes:
                cells = []
                for split in splits:
                    bad = self.unreadable.get(split, {}).get(name, 0)
                    cell = str(self.counts[split].get(name, 0)) + (f" +{bad}!" if bad else "")
                    cells.append(f"{cell:>9}")
                lines.append("    " + name.ljust(width) + "".join(cells))
            if any(n for per_class in self.unreadable.values() for n in per_class.values()):
                lines.append("    (+N! = unreadable files, not counted)")
        if self.sizes:
            w, h, mp = self.sizes["width"], self.sizes["height"], self.sizes["megapixels"]
            lines.append(f"  sizes: width {w['min']:.0f}..{w['max']:.0f} (median {w['median']:.0f}), "
                         f"height {h['min']:.0f}..{h['max']:.0f} (median {h['median']:.0f}), "
                         f"{mp['min']:.2f}..{mp['max']:.2f} MP (median {mp['median']:.2f})")
        if self.formats:
            lines.append("  formats: " + ", ".join(f"{n} {kind}" for kind, n in self.formats.items()))
        counts = self.severity_counts()
        lines.append("  problems: " + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES))
        leaks = [p for p in self.problems if p.problem in ("split-leakage", "near-duplicate-leakage")]
        if leaks:
            lines.append(f"  !!! LEAKAGE: {_files_in_findings(leaks)} have copies in another split; "
                         "validation/test scores will be too good. Remove the copies from val/test. !!!")
        conflicts = [p for p in self.problems if p.problem == "label-conflict"]
        if conflicts:
            lines.append(f"  !!! LABEL CONFLICT: {_files_in_findings(conflicts)} show a picture that is also "
                         "filed under another class; keep each picture in its one right class. !!!")
        lines.extend(self._problem_lines())
        if self.quarantined:
            lines.append(f"  moved {len(self.quarantined)} unreadable file(s) aside (nothing deleted):")
            lines.extend(f"    {src} -> {dst}" for src, dst in self.quarantined)
        if self.usable:
            lines.append("verdict: usable for training (exit code 0)")
        else:
            lines.append("verdict: NOT usable for training yet (exit code 1):")
            lines.extend(f"  - {reason}" for reason in self.reasons)
        return "\n".join(lines)

    def _problem_lines(self) -> list[str]:
        lines = []
        kinds: dict[tuple[str, str], list[Problem]] = {}
        for p in self.problems:
            kinds.setdefault((p.severity, p.problem), []).append(p)
        for (severity, problem), items in kinds.items():
            if problem in COPY_PROBLEMS:  # the rows of one finding share its detail, which names every file
                shown = list(dict.fromkeys(p.detail for p in items))
                lines.append(f"  {severity.upper()} {problem} ({_files_in_findings(items)}):")
            else:
                shown = [f"{p.path}: {p.detail}" for p in items]
                lines.append(f"  {severity.upper()} {problem} ({len(items)}):")
            lines.extend(f"    {line}" for line in shown[:_SHOWN_PER_PROBLEM])
            if len(shown) > _SHOWN_PER_PROBLEM:
                lines.append(f"    ... and {len(shown) - _SHOWN_PER_PROBLEM} more (all in --fix-report CSV)")
        return lines


def _files_in_findings(rows: list[Problem]) -> str:
    """'5 files in 2 findings' for the rows of findings about several files (a file may be in several)."""
    files, findings = len({p.path for p in rows}), len({(p.problem, p.detail) for p in rows})
    return f"{files} file{'s' if files != 1 else ''} in {findings} finding{'s' if findings != 1 else ''}"


# --------------------------------------------------------------------------------------------
# finding the files: class folders as cnnlab reads them, plus what it ignores
# --------------------------------------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    """Visible sub-folders (symlinked ones included), sorted, as cnnlab.data reads them."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if not _is_hidden(e.name) and e.is_dir()]


def _split_folders(root: Path) -> dict[str, Path]:
    """{split: folder} as found on disk (train/val/test), or {"all": root} for ROOT/<class>/ layouts."""
    splits = {SPLIT_FOLDERS[p.name.lower()]: p for p in _visible_dirs(root) if p.name.lower() in SPLIT_FOLDERS}
    return dict(sorted(splits.items(), key=lambda kv: _split_rank(kv[0]))) if splits else {"all": root}


def _split_rank(split: str) -> int:
    return {"train": 0, "val": 1, "test": 2}.get(split, 3)


def _outer_notes(root: Path, splits: dict[str, Path]) -> list[tuple[str, str, str, str, str]]:
    """(path, split, severity, problem, detail) for entries above the class folders, which are not read."""
    flat = "all" in splits
    levels = [(root, "", None if flat else {folder.name for folder in splits.values()})]
    if not flat:  # None: every visible folder at that level is a class folder
        levels += [(folder, split, None) for split, folder in splits.items()]
    notes = []
    for folder, split, known in levels:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            is_dir = entry.is_dir()
            if _is_hidden(entry.name):
                notes.append((entry.path + (os.sep if is_dir else ""), split, "warning", "hidden-ignored",
                              f"hidden {'folder' if is_dir else 'file'} ignored"))
            elif not is_dir:
                notes.append((entry.path, split, "warning", "ignored-file",
                              "a file outside any class folder is not read; move it into its class folder"))
            elif known is not None and entry.name not in known:
                notes.append((entry.path, split, "warning", "ignored-folder", "not a train/val/test folder, "
                              "so it is not read (with split folders, class folders go inside them)"))
    return notes


# --------------------------------------------------------------------------------------------
# reading every image (in parallel)
# --------------------------------------------------------------------------------------------


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _examine(path: str, max_pixels: int) -> tuple[ImageInfo, str | None]:
    """Inspect and decode one file (errors become problems) and hash its bytes."""
    info = inspect_image(path, max_pixels=max_pixels)
    if not info.readable:
        return info, None
    try:
        return info, _sha256(path)
    except OSError:
        return info, None  # read a moment ago; a file vanishing now is not worth a report


def _examine_all(paths: list[str], max_pixels: int, workers: int | None) -> list[tuple[ImageInfo, str | None]]:
    # Threads, not processes: Pillow's decoders and hashlib release the GIL on the heavy work, so
    # threads run in parallel without pickling, without forking a process that has torch loaded,
    # and without each worker paying torch's import time.
    workers = workers or os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        results = pool.map(lambda path: _examine(path, max_pixels), paths)
        return list(tqdm(results, total=len(paths), desc="checking images", unit="img",
                         file=sys.stderr, disable=None))
    finally:  # on Ctrl-C or SIGTERM the images not yet started are dropped, not read to the end
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": float(statistics.median(values)), "max": max(values)}


def _quarantine(root: Path, problems: list[Problem], raw_paths: dict[str, str], target: Path
                ) -> tuple[list[tuple[str, str]], set[str]]:
    """Move unreadable files (error-severity problems, not a label file's bad rows) to `target`, keeping their path
    relative to root (a file outside root: its absolute path under `target`).

    Returns the moves (from, to) and every reported path now gone (a file reached through a
    symlinked folder too is moved once, and gone under both paths).
    """
    bad = {p.path: raw_paths[p.path] for p in problems  # a label file's bad row may name a good file: not moved
           if p.severity == "error" and p.problem not in ROW_PROBLEMS and p.path in raw_paths}
    real = {shown: os.path.realpath(path) for shown, path in bad.items()}  # before anything moves
    moved, done = [], set()
    for shown, source in bad.items():
        if real[shown] in done:
            continue
        relative = os.path.relpath(source, root)
        if relative.split(os.sep)[0] == os.pardir:  # a label file may name files anywhere: keep their full path
            relative = os.path.abspath(source).lstrip(os.sep)
        destination = target / relative
        if os.path.lexists(destination):
            continue  # never overwrite: an earlier quarantine holds a file of that name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, destination)  # a rename on the same disk; never a delete of user data
        done.add(real[shown])
        moved.append((shown, safe_path(destination)))
    return moved, {shown for shown in bad if real[shown] in done}


def _check_quarantine_target(root: Path, target: Path) -> None:
    inside = os.path.relpath(target.resolve(), root.resolve())
    if not inside.startswith("..") and not any(_is_hidden(part) for part in Path(inside).parts):
        raise CnnlabError(f"quarantine folder {target} is inside the dataset {root}, where it would be "
                          "read as a class; choose a folder outside it, or a hidden one such as "
                          f"{root / '.quarantine'}")


def _scan(root: Path) -> tuple[dict[str, list[str]], list[tuple[str, str, str]], list[tuple]]:
    """Classes {split: [class folder names]}, image files (path, split, class) and walk notes."""
    splits = _split_folders(root)
    folders = {split: {p.name: p for p in _visible_dirs(folder)} for split, folder in splits.items()}
    located: list[tuple[str, str, str]] = []
    notes: list[tuple] = []  # (raw path, split, class, severity, problem, detail)
    for split, per_class in folders.items():
        for name, folder in per_class.items():
            walk = walk_images(folder)  # exactly the files training reads, and what it leaves out
            images = walk.images
            located += [(path, split, name) for path in images]
            notes += [(n.path, split, name, n.severity, n.problem, n.detail) for n in walk.notes]
            if not images:
                refused = ": training refuses it" if split in ("train", "all") else ""
                notes.append((str(folder), split, name, "warning", "empty-class",
                              f"class folder with no images{refused}"))
    notes += [(path, split, "", *rest) for path, split, *rest in _outer_notes(root, splits)]
    return {split: list(per_class) for split, per_class in folders.items()}, located, notes


def _scan_label_file(file: Path) -> tuple[dict[str, list[str]], list[tuple[str, str, str]], list[tuple]]:
    """Labels {split: [labels]}, the files of usable rows (path, split, label) and the rows left out, as _scan."""
    table = read_labels(file, SPLIT_FOLDERS)
    located = [(path, split, label) for split, per_label in table.found.items()
               for label, paths in per_label.items() for path in paths]
    notes = [(n.path, n.split, n.label, n.severity, n.problem, n.detail) for n in table.notes]
    return {split: list(per_label) for split, per_label in table.found.items()}, located, notes


def check_dataset(root: Annotated[str | os.PathLike, Help("Image folder: <class>/ folders, or train/ val/ test/ "
                                                         "holding them; or a CSV of path,label[,split] (a folder "
                                                         "holding labels.csv: that file).")],
                  fix_report: Annotated[str | os.PathLike | None, Help(
                      "Write every problem to this CSV (path, split, class, severity, problem, detail).")] = None,
                  quarantine: Annotated[str | os.PathLike | None, Help(
                      "Move unreadable files into this folder, keeping their relative paths (nothing is deleted or "
                      "rewritten; a label file's rows are not changed).")] = None,
                  max_pixels: Annotated[int, Help("Images with more pixels are errors (read from the header).")]
                  = DEFAULT_MAX_PIXELS,
                  workers: Annotated[int | None, Help("Parallel readers; default: the number of CPU cores.")] = None
                  ) -> DataReport:
    """Check an image folder before training: unreadable files, duplicates, leakage, outliers, imbalance.
    Exit 1 if not trainable.

    Scans in parallel and reports counts, sizes and every problem (see the module's docstring)."""
    root = Path(root)
    table = label_file(root)
    if quarantine is not None and table is None:  # a label file's folder is not scanned: any target is safe
        _check_quarantine_target(root, Path(quarantine))
    report = DataReport(root=safe_path(root), layout="")
    try:
        report.layout = find_samples(root).split_source  # how training will split it
    except CnnlabError as error:
        report.layout = "cannot be trained as it is"
        report.problems.append(Problem(safe_path(root), "", "", "fatal", "layout", str(error)))
    if table is None and not root.is_dir():
        report.reasons = _reasons(report)
        return _finish(report, fix_report)
    try:
        classes, located, notes = _scan_label_file(table) if table is not None else _scan(root)
    except CnnlabError:  # a label file that cannot be read (its header, its encoding): the fatal problem above says why
        report.reasons = _reasons(report)
        return _finish(report, fix_report)
    report.classes = sorted({name for names in classes.values() for name in names})
    report.counts = {split: dict.fromkeys(names, 0) for split, names in classes.items()}
    report.unreadable = {split: dict.fromkeys(names, 0) for split, names in classes.items()}
    facts: list[FileFacts] = []
    results = _examine_all([path for path, _, _ in located], max_pixels, workers)
    for (path, split, name), (info, digest) in zip(located, results):
        notes += [(path, split, name, p.severity, p.problem, p.detail) for p in info.problems]
        if info.readable:
            report.counts[split][name] += 1
            kind = f"{info.format} {info.bits or '?'}-bit {info.channels or '?'}-channel"
            report.formats[kind] = report.formats.get(kind, 0) + 1
            facts.append(FileFacts(safe_path(path), split, name, info.format or "unknown", info.width, info.height,
                                   digest, info.grey_std, info.thumbnail))
        else:
            report.unreadable[split][name] += 1
    notes += duplicate_findings(facts, flat="all" in classes)
    notes += outlier_findings(facts)
    train_like = "train" if "train" in report.counts else "all"
    notes += imbalance_finding(report.counts.get(train_like, {}), str(root))
    report.formats = dict(sorted(report.formats.items(), key=lambda kv: -kv[1]))
    if facts:
        report.sizes = {"width": _stats([f.width for f in facts]), "height": _stats([f.height for f in facts]),
                        "megapixels": _stats([f.width * f.height / 1e6 for f in facts])}

    rank = {severity: i for i, severity in enumerate(SEVERITIES)}
    report.problems += sorted((Problem(safe_path(path), *rest) for path, *rest in notes),
                              key=lambda p: (rank[p.severity], p.problem, p.path))
    if quarantine is not None:
        raw_paths = {safe_path(path): path for path, _, _ in located}
        base = table.parent if table is not None else root  # relative paths in a label file are from its folder
        report.quarantined, gone = _quarantine(base, report.problems, raw_paths, Path(quarantine))
        report.problems = [replace(p, detail=p.detail + " (moved to quarantine)") if p.path in gone else p
                           for p in report.problems]
    report.reasons = _reasons(report)
    return _finish(report, fix_report)


def _reasons(report: DataReport) -> list[str]:
    """Why the data cannot be trained on as it now is (empty list: it can)."""
    reasons = [p.detail for p in report.problems if p.severity == "fatal"]
    rows = [p for p in report.problems if p.severity == "error" and p.problem in ROW_PROBLEMS]
    if rows:
        reasons.append(f"{len(rows)} row(s) of the label file left out (training skips them): fix or remove them")
    left = [p for p in report.problems if p.severity == "error" and p.problem not in ROW_PROBLEMS
            and not p.detail.endswith("(moved to quarantine)")]
    if left:
        reasons.append(f"{len(left)} unreadable file(s) left: fix or remove them, or move them aside "
                       "with --quarantine DIR")
    if not reasons:  # the layout is fine; are enough images readable?
        train = report.counts.get("train", report.counts.get("all", {}))
        without = [name for name, n in train.items() if not n]
        if without:
            reasons.append(f"class(es) with no readable training image: {', '.join(without)}")
        if len(train) - len(without) < 2:
            reasons.append(f"{len(train) - len(without)} class(es) with readable training images; "
                           "a classifier needs two")
    return reasons


def _finish(report: DataReport, fix_report: str | os.PathLike | None) -> DataReport:
    report.usable = not report.reasons
    if fix_report is not None:
        Path(fix_report).parent.mkdir(parents=True, exist_ok=True)
        with open(fix_report, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(p.row() for p in report.problems)
    return report


# --------------------------------------------------------------------------------------------
# image sizes from every header (for a run's dataset.json and report)
# --------------------------------------------------------------------------------------------

SIZE_PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
MEGAPIXEL_BINS = (0, 0.1, 0.3, 1, 2, 4, 8, 16, 32, 64, float("inf"))  # roughly doubling: thumbnails to scans


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    last = len(ordered) - 1
    return {f"p{p}": float(ordered[round(p / 100 * last)]) for p in SIZE_PERCENTILES}


def size_summary(paths: list[str], workers: int | None = None) -> dict:
    """Every file's width, height and format from its header (nothing decoded; fast on any folder):
    percentiles p0 (min) .. p100 (max) of width, height and megapixels, a megapixel histogram, and the
    formats. Files whose header cannot be read are counted, not raised."""
    def header(path: str):
        try:
            return image_header(path, max_pixels=2**62)  # headers only: report over-cap images too
        except CnnlabError:
            return None
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        found = [h for h in pool.map(header, paths) if h is not None]
    summary: dict = {"files": len(paths), "unreadable": len(paths) - len(found)}
    if not found:
        return summary
    widths, heights = [w for w, _, _ in found], [h for _, h, _ in found]
    megapixels = [w * h / 1e6 for w, h, _ in found]
    counts = [0] * (len(MEGAPIXEL_BINS) - 1)
    for value in megapixels:
        counts[next(i for i in range(len(counts)) if value < MEGAPIXEL_BINS[i + 1])] += 1
    formats: dict[str, int] = {}
    for _, _, kind in found:
        formats[kind] = formats.get(kind, 0) + 1
    return summary | {"width": _percentiles(widths), "height": _percentiles(heights),
                      "megapixels": _percentiles(megapixels),
                      "megapixel_histogram": {"edges": [e if e != float("inf") else None for e in MEGAPIXEL_BINS],
                                              "counts": counts},
                      "formats": dict(sorted(formats.items(), key=lambda kv: -kv[1]))}
