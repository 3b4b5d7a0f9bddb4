"""How the data check's near-duplicate comparison scores copies and different pictures of a real folder (not a test).

    .venv/bin/python benchmarks/near_duplicates.py --data FOLDER [--sample 150] --out benchmarks/results/NAME.md

Two measurements behind cnnlab.data.findings' thresholds (CANDIDATE_SIMILARITY, SAME_PICTURE):

  (1) copies: a seeded sample of the folder's images is re-saved in a temporary folder as a person might copy
      a photo (JPEG quality 30, half and quarter size, PNG, brightened by 30%); each copy's thumbnail is
      compared with its original's, coarse (8x8, the candidate step) and full (32x32, the decision)
  (2) different files: every pair of the folder's images that passes the candidate step, with its full
      similarity; the highest are listed with their paths so that a person can look at them side by side

Thumbnails come from cnnlab.data.images.inspect_image, exactly as `cnnlab data check` makes them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from cnnlab.data import findings
from cnnlab.data.folders import walk_images
from cnnlab.data.images import inspect_image, read_pil

# How a copy is made from the original's decoded pixels, and the options it is saved with.
COPIES = {
    "JPEG quality 30": (lambda im: im, ".jpg", {"quality": 30}),
    "half size, JPEG 75": (lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
                           ".jpg", {"quality": 75}),
    "quarter size, JPEG 75": (lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.BICUBIC),
                              ".jpg", {"quality": 75}),
    "PNG (lossless)": (lambda im: im, ".png", {}),
    "brightened 30%, JPEG 85": (lambda im: ImageEnhance.Brightness(im).enhance(1.3), ".jpg", {"quality": 85}),
}


def _thumbnails(paths: list[str]) -> np.ndarray:
    """(N, S, S) float32 grey thumbnails, as the data check makes them."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        infos = list(pool.map(inspect_image, paths))
    side = int(np.sqrt(len(infos[0].thumbnail)))
    return np.stack([np.frombuffer(i.thumbnail, np.uint8).reshape(side, side) for i in infos]).astype(np.float32)


def _similarities(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise (coarse, full) edge similarities of two stacks of thumbnails: (N,), (N,)."""
    pool = findings._COARSE_POOL
    coarse = findings._edge_vectors(findings._pooled(a, pool)) * findings._edge_vectors(findings._pooled(b, pool))
    full = findings._edge_vectors(a) * findings._edge_vectors(b)
    return coarse.sum(axis=1), full.sum(axis=1)


def measure_copies(paths: list[str], sample: int, seed: int) -> list[str]:
    """Markdown rows: per kind of copy, the lowest and 1st-percentile similarities and how many are found."""
    chosen = [paths[i] for i in np.random.default_rng(seed).choice(len(paths), min(sample, len(paths)), replace=False)]
    originals = _thumbnails(chosen)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (change, suffix, options) in COPIES.items():
            copies = []
            for k, path in enumerate(chosen):
                copies.append(os.path.join(folder, f"{k}{suffix}"))
                change(read_pil(path)).save(copies[-1], **options)
            coarse, full = _similarities(originals, _thumbnails(copies))
            found = int(((coarse >= findings.CANDIDATE_SIMILARITY) & (full >= findings.SAME_PICTURE)).sum())
            rows.append(f"| {name} | {coarse.min():.3f} | {full.min():.3f} | {np.percentile(full, 1):.3f} | "
                        f"{found} of {len(chosen)} |")
    return rows


def measure_different(paths: list[str], root: Path, shown: int) -> tuple[list[str], dict]:
    """Markdown rows for the most similar pairs of different files, and counts and times of the two steps."""
    thumbnails = _thumbnails(paths)
    start = time.perf_counter()
    coarse = findings._edge_vectors(findings._pooled(thumbnails, findings._COARSE_POOL))
    first, second = findings._candidate_pairs(coarse)
    candidates_s = time.perf_counter() - start
    start = time.perf_counter()
    full = findings._confirm(thumbnails, first, second)
    confirm_s = time.perf_counter() - start
    order = np.argsort(-full)[:shown]
    rows = [f"| {full[k]:.3f} | {os.path.relpath(paths[first[k]], root)} | "
            f"{os.path.relpath(paths[second[k]], root)} |" for k in order]
    counts = {"images": len(paths), "pairs": len(paths) * (len(paths) - 1) // 2, "candidates": len(first),
              "same picture": int((full >= findings.SAME_PICTURE).sum()), "candidates_s": candidates_s,
              "confirm_s": confirm_s,
              "histogram": np.histogram(full, bins=[-1, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01])[0].tolist()}
    return rows, counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an image folder (class folders, split or not)")
    parser.add_argument("--sample", type=int, default=150, help="images copied in (1)")
    parser.add_argument("--shown", type=int, default=10, help="most similar different pairs listed in (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/near_duplicates.md"))
    args = parser.parse_args(argv)
    began = time.perf_counter()
    paths = walk_images(args.data).images  # every image under it, as the check reads them (hidden ones left out)
    copies = measure_copies(paths, args.sample, args.seed)
    different, counts = measure_different(paths, args.data, args.shown)
    lines = [
        "# Near-duplicates: copies and different pictures, as the data check scores them", "",
        f"Generated by `benchmarks/near_duplicates.py --data {args.data} --sample {args.sample}` in "
        f"{time.perf_counter() - began:.0f} s on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {datetime.datetime.now():%Y-%m-%d %H:%M}. Thresholds: candidate "
        f"(coarse) >= {findings.CANDIDATE_SIMILARITY}, same picture (full) >= {findings.SAME_PICTURE}.", "",
        f"## (1) Copies of {min(args.sample, len(paths))} of the folder's images", "",
        "| copy | coarse, lowest | full, lowest | full, 1st percentile | found |", "|---|---|---|---|---|",
        *copies, "",
        f"## (2) Different files: {counts['images']} images, {counts['pairs']:,} pairs", "",
        f"{counts['candidates']:,} pairs pass the candidate step ({counts['candidates_s']:.2f} s), compared in full in "
        f"{counts['confirm_s']:.2f} s; scored as the same picture: {counts['same picture']}. Full similarity "
        "of the candidates: " + ", ".join(f"{label}: {n}" for label, n in zip(
            ("< 0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8", "0.8-0.9", ">= 0.9"), counts["histogram"])) + ".", "",
        "The most similar pairs (look at them side by side: are they copies?):", "",
        "| full similarity | file | file |", "|---|---|---|", *different, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
