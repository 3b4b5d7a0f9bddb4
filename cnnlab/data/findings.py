"""What a person would spot in an image folder, found from per-file facts: duplicates and near-duplicates,
label conflicts, leakage across splits, odd files within a class, class imbalance. Pure: no I/O.

Each finding is a row (path, split, class, severity, problem, detail), the shape of cnnlab.data.check's
report. Every threshold is a named constant with its reason.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

Row = tuple[str, str, str, str, str, str]  # path, split, class, severity, problem, detail

NEAR_DUPLICATE_BITS = 4  # dHash bits two copies of one picture may differ in (re-encoded, resized, recoloured):
#                          unrelated photos differ in ~32 of 64, and even similar product shots in 10+
HASH_BANDS = 5  # split the 64 bits into 5 bands: two hashes within 4 bits agree on at least one band (pigeonhole)
FORMAT_OUTLIER_SHARE = 0.05  # a format making up at most 5% of a class (1 GIF among 400 JPEGs) is a stray file
MIN_CLASS_FOR_OUTLIERS = 10  # below 10 images a class has no "usual" format or size to stand out from
TINY_SIDE = 32  # a short side under 32 px holds almost nothing a CNN can use (most models need >= 32)
EXTREME_ASPECT = 4.0  # longer than 4:1: a square centre crop keeps under a quarter of the picture
SIZE_OUTLIER_AREA = 1 / 16  # 4x smaller on each side than the class's median image: probably not the same kind
NEAR_UNIFORM_STD = 3.0  # grey levels varying by under 3 of 255: a blank, black or white frame
IMBALANCE_RATIO = 3.0  # largest class >= 3x the smallest: accuracy is then dominated by the large classes


@dataclass(frozen=True)
class FileFacts:
    """What was read about one readable image file."""

    path: str
    split: str
    class_name: str
    format: str
    width: int
    height: int
    sha256: str | None
    dhash: int | None
    grey_std: float | None


def _others(members: list[FileFacts], path: str, limit: int = 3) -> str:
    rest = [m.path for m in members if m.path != path]
    shown = ", ".join(rest[:limit])
    return shown + (f" and {len(rest) - limit} more" if len(rest) > limit else "")


def _group_rows(members: list[FileFacts], kind: str, flat: bool) -> list[Row]:
    """Rows for one group of identical ("same bytes") or near-identical ("nearly the same picture") files."""
    splits = sorted({m.split for m in members}, key=lambda s: {"train": 0, "val": 1, "test": 2}.get(s, 3))
    classes = sorted({m.class_name for m in members})
    rows = []
    for m in members:
        others = _others(members, m.path)
        if len(classes) > 1:
            row = ("label-conflict", f"{kind} as {others}, under class{'es' if len(classes) > 1 else ''} "
                   f"{', '.join(classes)}: one picture with {len(classes)} labels; at most one is right")
        elif len(splits) > 1:
            row = ("split-leakage" if kind == "same bytes" else "near-duplicate-leakage",
                   f"LEAKAGE: {kind} in {' and '.join(splits)} ({others}); the model is scored on an image it "
                   "trained on")
        else:
            note = "; the seeded train/val split may put copies on both sides" if flat else ""
            row = ("duplicate" if kind == "same bytes" else "near-duplicate",
                   f"{kind} as {others} ({len(members)} copies){note}")
        rows.append((m.path, m.split, m.class_name, "warning", *row))
    return rows


def duplicate_findings(facts: list[FileFacts], flat: bool) -> list[Row]:
    """Exact copies (same bytes) and near copies (dHash within NEAR_DUPLICATE_BITS), as groups.

    A group under more than one class is a label conflict (whatever the splits); one class over several
    splits is leakage; otherwise a duplicate. Near copies are grouped transitively (A~B, B~C: one group),
    and exact copies are not reported again as near copies.
    """
    rows: list[Row] = []
    by_digest: dict[str, list[FileFacts]] = {}
    for f in facts:
        if f.sha256 is not None:
            by_digest.setdefault(f.sha256, []).append(f)
    for members in by_digest.values():
        if len(members) > 1:
            rows += _group_rows(members, "same bytes", flat)
    # one representative per distinct content, then near copies among those; a flat image's dHash is all
    # zeros whatever its colour, so blank frames are left to outlier_findings ("near-uniform")
    distinct = [members[0] for members in by_digest.values() if members[0].dhash is not None
                and (members[0].grey_std is None or members[0].grey_std >= NEAR_UNIFORM_STD)]
    for group in _near_groups(distinct):
        members = [m for rep in group for m in by_digest[rep.sha256]]
        rows += _group_rows(members, "nearly the same picture", flat)
    return rows


def _near_groups(items: list[FileFacts]) -> list[list[FileFacts]]:
    """Groups of items whose dHashes are within NEAR_DUPLICATE_BITS of another member's (union-find).

    Candidate pairs share one of HASH_BANDS bit bands exactly, so the work grows with the number of
    similar pairs, not with the square of the number of files.
    """
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    width = 64 // HASH_BANDS + 1
    for band in range(HASH_BANDS):
        buckets: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            buckets.setdefault((item.dhash >> (band * width)) & ((1 << width) - 1), []).append(i)
        for members in buckets.values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1:]:
                    if root(a) != root(b) and bin(items[a].dhash ^ items[b].dhash).count("1") <= NEAR_DUPLICATE_BITS:
                        parent[root(a)] = root(b)
    groups: dict[int, list[FileFacts]] = {}
    for i, item in enumerate(items):
        groups.setdefault(root(i), []).append(item)
    return [group for group in groups.values() if len(group) > 1]


def outlier_findings(facts: list[FileFacts]) -> list[Row]:
    """Files that do not look like the rest of their class: another format, tiny, extreme aspect ratio,
    far smaller than the class's usual size, or near-uniform (blank)."""
    rows: list[Row] = []
    by_class: dict[tuple[str, str], list[FileFacts]] = {}
    for f in facts:
        by_class.setdefault((f.split, f.class_name), []).append(f)
    for (split, name), members in by_class.items():
        formats = Counter(m.format for m in members)
        usual, usual_count = formats.most_common(1)[0]
        areas = [m.width * m.height for m in members]
        median_area = statistics.median(areas)
        enough = len(members) >= MIN_CLASS_FOR_OUTLIERS
        for m in members:
            short, long = sorted((m.width, m.height))
            if enough and m.format != usual and formats[m.format] <= FORMAT_OUTLIER_SHARE * len(members):
                rows.append((m.path, split, name, "warning", "format-outlier",
                             f"{m.format} among {usual_count} {usual} files of class {name}: a placeholder or a "
                             "stray file? look at it"))
            if short < TINY_SIDE:
                rows.append((m.path, split, name, "warning", "tiny-image",
                             f"{m.width}x{m.height} px: too small to hold much (short side under {TINY_SIDE} px)"))
            elif enough and m.width * m.height < SIZE_OUTLIER_AREA * median_area:
                rows.append((m.path, split, name, "warning", "size-outlier",
                             f"{m.width}x{m.height} px, far smaller than the class's usual "
                             f"{median_area / 1e6:.2g} MP: a thumbnail or another kind of picture?"))
            if short and long / short > EXTREME_ASPECT:
                rows.append((m.path, split, name, "warning", "extreme-aspect",
                             f"{m.width}x{m.height} px ({long / short:.1f}:1): a square crop keeps under "
                             f"{100 / (long / short):.0f}% of it"))
            if m.grey_std is not None and m.grey_std < NEAR_UNIFORM_STD:
                rows.append((m.path, split, name, "warning", "near-uniform",
                             f"almost one flat colour (grey levels vary by {m.grey_std:.1f} of 255): a blank frame?"))
    return rows


def imbalance_finding(counts: dict[str, int], where: str) -> list[Row]:
    """One row when the largest class has IMBALANCE_RATIO times the images of the smallest (non-empty) one."""
    present = {name: n for name, n in counts.items() if n > 0}
    if len(present) < 2:
        return []
    large, small = max(present, key=present.get), min(present, key=present.get)
    ratio = present[large] / present[small]
    if ratio < IMBALANCE_RATIO:
        return []
    return [(where, "", "", "warning", "class-imbalance",
             f"class {large} has {present[large]} images, {small} only {present[small]} ({ratio:.1f}x): accuracy "
             "will be dominated by the large classes; `cnnlab train --balance auto` (the default) reweights the "
             "loss, and the per-class table shows how each class fares")]
