"""What a person would spot in an image folder, found from per-file facts: duplicates and near-duplicates,
label conflicts, leakage across splits, odd files within a class, class imbalance. Pure: no I/O.

Each finding is a row (path, split, class, severity, problem, detail), the shape of cnnlab.data.check's
report. A finding about several files (COPY_PROBLEMS) gives one row per file, all with the same detail,
which names every file of it. Every threshold is a named constant with its reason.

Near-duplicates are judged on each image's grey thumbnail (cnnlab.data.images.THUMBNAIL_SIZE, 32x32) by its
edges: the differences between neighbouring pixels. A plain background has none, so two different objects
photographed on one background share nothing but the parts of their outlines that coincide, while a copy keeps
every edge where it was, whatever its size, codec or brightness. Two steps keep this cheap on thousands of
images: every pair's coarse edges (the thumbnail pooled to 8x8) are compared at once by one matrix product,
and the pairs that agree there (CANDIDATE_SIMILARITY) are compared on the full thumbnail (SAME_PICTURE).
Pictures are put together only when every two of them are the same picture: A like B and B like C does not
make A like C (chained, near matches joined a bottle, a jar and a flat sheet shot on one white background).
A perceptual hash (dHash: the signs of 8x8 neighbour differences) was the first step before: on a plain
background those signs are coin tosses or the same for every photo, so copies of one photo on an evenly lit
background came out more than 4 of 64 bits apart, while different products on a background lit with a falloff
agreed within 4 (tests/data/test_check.py builds both).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Row = tuple[str, str, str, str, str, str]  # path, split, class, severity, problem, detail

CANDIDATE_SIMILARITY = 0.85  # edge similarity of the 8x8-pooled thumbnails from which a pair is compared in full.
#                              Pooling averages away what re-encoding and resizing change: copies score >= 0.99
#                              there, brightened by 30% (highlights clipped) >= 0.92, so 0.85 drops no pair that
#                              SAME_PICTURE would accept, and passes ~1 in 1,000 pairs of different photos (more on
#                              one plain background: the full comparison is there for them)
SAME_PICTURE = 0.90  # edge similarity of the full thumbnails from which two images are one picture. A copy keeps
#                      every edge where it was: re-encoded at quality 30, resized to 1/4, re-saved as PNG, it scores
#                      >= 0.97 on real photos; different objects share at most parts of an outline: different shirts
#                      laid on one sheet score <= 0.79 (benchmarks/results/near_duplicates.md), look-alike products on
#                      one white background <= 0.81 (the set of tests/data/test_check.py); 0.90 is between, with room
FORMAT_OUTLIER_SHARE = 0.05  # a format making up at most 5% of a class (1 GIF among 400 JPEGs) is a stray file
MIN_CLASS_FOR_OUTLIERS = 10  # below 10 images a class has no "usual" format or size to stand out from
TINY_SIDE = 32  # a short side under 32 px holds almost nothing a CNN can use (most models need >= 32)
EXTREME_ASPECT = 4.0  # longer than 4:1: a square centre crop keeps under a quarter of the picture
SIZE_OUTLIER_AREA = 1 / 16  # 4x smaller on each side than the class's median image: probably not the same kind
NEAR_UNIFORM_STD = 3.0  # grey levels varying by under 3 of 255: a blank, black or white frame
IMBALANCE_RATIO = 3.0  # largest class >= 3x the smallest: accuracy is then dominated by the large classes

COPY_PROBLEMS = ("duplicate", "near-duplicate", "split-leakage", "near-duplicate-leakage", "label-conflict")
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_COARSE_POOL = 4  # thumbnail pixels averaged per side for the candidate step: 32x32 -> 8x8
_ROWS_PER_BLOCK = 512  # images compared with others in one matrix product: (512, N) floats, 40 MB at N = 20,000


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
    grey_std: float | None
    thumbnail: bytes | None  # square grey thumbnail, uint8 row-major (cnnlab.data.images.THUMBNAIL_SIZE)


def _finding_rows(members: list[FileFacts], what: str, flat: bool) -> list[Row]:
    """One row per file of one finding (files with the same bytes, or pictures confirmed pairwise), each with
    the same detail naming every file: a label conflict when they are filed under several classes, leakage
    when under one class in several splits, else a duplicate."""
    members = sorted(members, key=lambda m: (_SPLIT_ORDER.get(m.split, 3), m.path))
    splits = sorted({m.split for m in members}, key=lambda s: _SPLIT_ORDER.get(s, 3))
    classes = sorted({m.class_name for m in members})
    paths = [m.path for m in members]
    files = " and ".join(paths) if len(paths) == 2 else ", ".join(paths)
    exact = what == "same bytes"
    if len(classes) > 1:
        problem = "label-conflict"
        detail = (f"{what}: {files}; one picture with {len(classes)} labels ({', '.join(classes)}), "
                  "at most one is right")
    elif len(splits) > 1:
        problem = "split-leakage" if exact else "near-duplicate-leakage"
        detail = (f"LEAKAGE: {what} in {' and '.join(splits)}: {files}; the model is scored on an image it "
                  "trained on")
    else:
        problem = "duplicate" if exact else "near-duplicate"
        note = "; the seeded train/val split may put copies on both sides" if flat else ""
        detail = f"{what}: {files}{note}"
    return [(m.path, m.split, m.class_name, "warning", problem, detail) for m in members]


def duplicate_findings(facts: list[FileFacts], flat: bool) -> list[Row]:
    """Exact copies (same bytes) as groups, and near copies (see the module doc) as pairs, or as one group
    when every two of its pictures are the same picture. Exact copies are not reported again as near copies."""
    rows: list[Row] = []
    by_digest: dict[str, list[FileFacts]] = {}
    for f in facts:
        if f.sha256 is not None:
            by_digest.setdefault(f.sha256, []).append(f)
    for members in by_digest.values():
        if len(members) > 1:
            rows += _finding_rows(members, "same bytes", flat)
    # one representative per distinct content, then near copies among those; a blank frame has no edges to
    # compare (only noise), so blank frames are left to outlier_findings ("near-uniform")
    distinct = [members[0] for members in by_digest.values() if members[0].thumbnail is not None
                and (members[0].grey_std is None or members[0].grey_std >= NEAR_UNIFORM_STD)]
    for group, similarities in same_pictures(distinct):
        low, high = min(similarities), max(similarities)
        what = (f"nearly the same picture (similarity {low:.3f})" if len(group) == 2 else
                f"{len(group)} pictures, every two nearly the same (similarity {low:.3f}..{high:.3f})")
        rows += _finding_rows([m for rep in group for m in by_digest[rep.sha256]], what, flat)
    return rows


def same_pictures(items: list[FileFacts]) -> list[tuple[list[FileFacts], list[float]]]:
    """Groups of items that are pairwise the same picture, with their pairwise edge similarities.

    Candidates: pairs whose 8x8-pooled thumbnails' edges agree (CANDIDATE_SIMILARITY); the same picture:
    edge_similarity >= SAME_PICTURE. Confirmed pairs that link into a set where every two are confirmed
    are one group; otherwise each confirmed pair is its own group of two (never joined through a third).
    """
    if len(items) < 2:
        return []
    side = math.isqrt(len(items[0].thumbnail))
    thumbnails = np.frombuffer(b"".join(item.thumbnail for item in items), dtype=np.uint8)
    thumbnails = thumbnails.reshape(len(items), side, side).astype(np.float32)  # (N, S, S)
    first, second = _candidate_pairs(_edge_vectors(_pooled(thumbnails, _COARSE_POOL)))
    similarity = _confirm(thumbnails, first, second)
    confirmed = similarity >= SAME_PICTURE
    pairs = list(zip(first[confirmed].tolist(), second[confirmed].tolist(), similarity[confirmed].tolist()))
    return [([items[i] for i in members], sims) for members, sims in _cliques_or_pairs(pairs)]


def edge_similarity(a: bytes, b: bytes) -> float:
    """How alike two square grey thumbnails' edges are: the cosine of their neighbour-difference fields (1: the same).

    A plain background has no differences, so it adds nothing: the score is made by the objects' outlines and
    inner edges (a correlation of the pixels themselves is dominated by object against background, so different
    shirts laid on one sheet correlate almost like copies). Brightness and contrast cancel out.
    """
    side = math.isqrt(len(a))
    pair = np.frombuffer(a + b, dtype=np.uint8).reshape(2, side, side).astype(np.float32)
    vectors = _edge_vectors(pair)
    return float(vectors[0] @ vectors[1])


def _pooled(thumbnails: np.ndarray, pool: int) -> np.ndarray:
    """(N, S, S) -> (N, S / pool, S / pool): the mean of each pool x pool block."""
    n, side, _ = thumbnails.shape
    return thumbnails.reshape(n, side // pool, pool, side // pool, pool).mean(axis=(2, 4))


def _edge_vectors(thumbnails: np.ndarray) -> np.ndarray:
    """(N, S, S) -> (N, 2 S (S - 1)): horizontal then vertical neighbour differences, each row of unit length
    (all zeros for a flat thumbnail, which is then like nothing)."""
    n = len(thumbnails)
    edges = np.concatenate([np.diff(thumbnails, axis=2).reshape(n, -1), np.diff(thumbnails, axis=1).reshape(n, -1)],
                           axis=1)
    norms = np.linalg.norm(edges, axis=1, keepdims=True)
    return edges / np.where(norms > 0, norms, 1)


def _candidate_pairs(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of unit rows whose cosine is >= CANDIDATE_SIMILARITY.

    Every pair is compared, a block of rows at a time, by a matrix product of short (8x8-pooled) edge vectors:
    N^2 / 2 dot products of 112 numbers, cheap next to decoding the N images, and no pair is missed.
    """
    firsts, seconds = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(vectors), _ROWS_PER_BLOCK):
        cosines = vectors[start:start + _ROWS_PER_BLOCK] @ vectors[start:].T  # (B, N - start)
        i, j = np.nonzero(cosines >= CANDIDATE_SIMILARITY)
        keep = j > i  # the block's columns start at its first row: j > i is the upper triangle
        firsts.append(i[keep] + start)
        seconds.append(j[keep] + start)
    return np.concatenate(firsts), np.concatenate(seconds)


def _confirm(thumbnails: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Edge similarity of the full thumbnails of each candidate pair (first[k], second[k]): (K,).

    A block of images at a time, as one matrix product with the images it has candidates among: few products
    when candidates are few, and no worse than all pairs' when a plain background makes most pairs candidates.
    """
    similarity = np.zeros(len(first), dtype=np.float32)
    if not len(first):
        return similarity
    used, position = np.unique(np.concatenate([first, second]), return_inverse=True)
    vectors = _edge_vectors(thumbnails[used])  # (U, D): only the images in some candidate pair
    rows, columns = position[:len(first)], position[len(first):]
    order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[order], np.arange(0, len(used) + _ROWS_PER_BLOCK, _ROWS_PER_BLOCK))
    for block, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        pairs = order[begin:end]
        if not len(pairs):
            continue
        others, column = np.unique(columns[pairs], return_inverse=True)
        start = block * _ROWS_PER_BLOCK
        products = vectors[start:start + _ROWS_PER_BLOCK] @ vectors[others].T  # (B, C)
        similarity[pairs] = products[rows[pairs] - start, column]
    return similarity


def _cliques_or_pairs(pairs: list[tuple[int, int, float]]) -> list[tuple[list[int], list[float]]]:
    """Confirmed pairs (i, j, similarity) as groups: a connected set in which every two are confirmed is one
    group; in any other connected set each pair stays a group of its own."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[root(i)] = root(j)
    connected: dict[int, list[tuple[int, int, float]]] = {}
    for pair in pairs:
        connected.setdefault(root(pair[0]), []).append(pair)
    groups = []
    for edges in connected.values():
        members = sorted({i for i, j, _ in edges} | {j for i, j, _ in edges})
        if len(edges) == len(members) * (len(members) - 1) // 2:  # every two confirmed
            groups.append((members, [s for _, _, s in edges]))
        else:
            groups += [([i, j], [s]) for i, j, s in edges]
    return groups


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


# What a suffix says a file is: the format a run can see without opening the file.
SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP",
                  ".tif": "TIFF", ".tiff": "TIFF"}
# The outliers a training run can tell from what it has in hand (suffixes, and the decoded sizes its cache keeps):
# a stray format, a tiny image (kept at its own size by the cache), an extreme aspect ratio (kept by the resize).
QUICK_OUTLIERS = ("format-outlier", "tiny-image", "extreme-aspect")


def quick_outliers(samples: list[tuple[str, str, str]], sizes: dict[str, tuple[int, int]] | None = None) -> list[Row]:
    """The outlier rows data check would give that need no extra reading: `samples` (path, split, class) and, where
    known, each file's decoded (height, width) at any scale (the cache's). A placeholder GIF among a class's JPEGs
    becomes a training example otherwise, unnoticed."""
    facts = []
    for path, split, class_name in samples:
        height, width = (sizes or {}).get(path, (0, 0))
        facts.append(FileFacts(path, split, class_name, SUFFIX_FORMATS.get(Path(path).suffix.lower(), "?"),
                               width, height, None, None, None))
    return [row for row in outlier_findings(facts) if row[4] in QUICK_OUTLIERS and (row[4] == "format-outlier"
                                                                                     or row[0] in (sizes or {}))]


def describe_outliers(rows: list[Row], data: str) -> str | None:
    """One line for a training run: how many files look out of place, one example, and the command that lists them."""
    if not rows:
        return None
    files = sorted({row[0] for row in rows})
    example = rows[0]
    return (f"warning: {len(files)} file{'s' if len(files) != 1 else ''} look{'s' if len(files) == 1 else ''} out "
            f"of place (e.g. {example[0]}: {example[5]}); `cnnlab data check {data}` lists them")
