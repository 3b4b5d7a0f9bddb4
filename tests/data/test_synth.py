"""cnnlab.synth: the built-in shapes dataset is deterministic, an ImageFolder tree, and sane."""

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cnnlab.errors import CnnlabError
from cnnlab.data import sparse
from cnnlab.data.images import read_image
from cnnlab.data.synth import (MARGIN, MAX_EXTENT, MIN_EXTENT, SHAPE_NAMES, SynthSummary, _write_one,
                          pyramid_factors, render, shape_mask, synthesize)

# Small enough that every dataset in this file is written in well under a second.
SMALL = dict(classes=3, per_class=5, size=64, seed=0)


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by its path relative to root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    synthesize(tmp_path / "a", **SMALL)
    synthesize(tmp_path / "b", **SMALL)
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert len(a) == 3 * 5 + 1  # 15 JPEGs + synth.json
    assert a == b


def test_worker_count_does_not_change_bytes(tmp_path):
    synthesize(tmp_path / "one", **SMALL, workers=1)
    synthesize(tmp_path / "two", **SMALL, workers=2)
    assert digests(tmp_path / "one") == digests(tmp_path / "two")


def test_different_seed_changes_every_image(tmp_path):
    synthesize(tmp_path / "a", **SMALL)
    synthesize(tmp_path / "b", **{**SMALL, "seed": 1})
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a.keys() == b.keys()
    images = [name for name in a if name.endswith(".jpg")]
    assert all(a[name] != b[name] for name in images)


def test_layout_counts_and_summary(tmp_path):
    summary = synthesize(tmp_path / "d", classes=4, per_class=10, size=48, seed=3, val_fraction=0.3)
    root = tmp_path / "d"
    names = ["circle", "square", "triangle", "star"]
    assert isinstance(summary, SynthSummary)
    assert summary.classes == names
    assert summary.counts == {"train": 4 * 7, "val": 4 * 3}
    assert summary.size == 48 and not summary.reused and summary.seconds > 0
    assert sorted(p.name for p in root.iterdir()) == ["synth.json", "train", "val"]
    for split, n in (("train", 7), ("val", 3)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(names)
        for name in names:
            files = sorted(p.name for p in (root / split / name).iterdir())
            assert len(files) == n
            assert all(f.startswith(f"{name}_") and f.endswith(".jpg") for f in files)
    # each index is in exactly one split: 0..6 train, 7..9 val
    assert sorted(p.name for p in (root / "val" / "star").iterdir()) == [
        "star_0007.jpg", "star_0008.jpg", "star_0009.jpg"]
    meta = json.loads((root / "synth.json").read_text())
    assert meta["parameters"]["seed"] == 3 and meta["parameters"]["size"] == 48
    assert meta["class_names"] == names and meta["complete"] is True
    text = summary.describe()
    assert "train: 28 (7 per class)" in text and "val: 12 (3 per class)" in text
    assert "circle, square, triangle, star" in text


def test_images_decode_at_requested_size(tmp_path):
    synthesize(tmp_path / "d", classes=2, per_class=2, size=80, val_fraction=0.5)
    paths = sorted((tmp_path / "d").rglob("*.jpg"))
    assert len(paths) == 4
    for path in paths:
        image = read_image(path)
        assert image.shape == (3, 80, 80) and str(image.dtype) == "torch.uint8"
        assert image.float().std() > 10  # textured, not a flat colour


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_shape_is_present_and_stands_out(name):
    for index in range(3):
        pixels, mask = render(name, 128, np.random.default_rng([7, SHAPE_NAMES.index(name), index]))
        assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == bool
        # Extent 25-55% of the side; the thinnest shape (arrow) covers ~30% of its circle.
        assert 0.01 < mask.mean() < 0.40
        rows, cols = np.nonzero(mask)
        border = int(MARGIN * 128)  # the shape keeps clear of the edges
        assert rows.min() >= border and rows.max() < 128 - border
        assert cols.min() >= border and cols.max() < 128 - border
        # Shape pixels differ clearly from the background around them (inside the bounding box).
        box = np.zeros_like(mask)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        inside = np.median(pixels[mask].astype(float), axis=0)
        around = np.median(pixels[box & ~mask].astype(float), axis=0)
        assert np.linalg.norm(inside - around) > 80
        # ...and is lighter (one edge polarity), which lets a small CNN find the edges early
        luma = np.array([0.299, 0.587, 0.114])
        assert (inside - around) @ luma > 60


def test_shape_mask_geometry():
    size, center, radius = 200, (100, 100), 80
    disc = np.pi * radius ** 2 / size ** 2
    assert shape_mask("circle", size, center, radius, 0.3).mean() == pytest.approx(disc, rel=0.02)
    assert shape_mask("square", size, center, radius, 0.3).mean() == pytest.approx(
        2 * radius ** 2 / size ** 2, rel=0.02)  # inscribed square: side r*sqrt(2)
    ring = shape_mask("ring", size, center, radius, 0.0)
    assert not ring[100, 100] and ring[100, 100 + 70]  # hole in the middle, solid near the rim
    # Every shape stays within its outer circle at any rotation.
    ys, xs = np.mgrid[:size, :size]
    outside = (xs - 100) ** 2 + (ys - 100) ** 2 > (radius + 1.5) ** 2
    for name in SHAPE_NAMES:
        for angle in (0.0, 1.0, 2.5):
            assert not (shape_mask(name, size, center, radius, angle) & outside).any(), name


def test_classes_stay_distinct_under_rotation():
    # No rotation of one shape overlaps another shape closely (a rotated square is not a class of
    # its own); the closest pair, square vs cross, has IoU ~0.74.
    size, center, radius = 96, (48, 48), 40
    angles = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    masks = {n: [shape_mask(n, size, center, radius, a) for a in angles] for n in SHAPE_NAMES}
    for a, b in itertools.combinations(SHAPE_NAMES, 2):
        reference = masks[a][0]
        best = max((reference & m).sum() / (reference | m).sum() for m in masks[b])
        assert best < 0.8, (a, b, best)


def test_extent_range_is_sane():
    assert 0 < MIN_EXTENT < MAX_EXTENT and MAX_EXTENT + 2 * MARGIN < 1
    assert len(SHAPE_NAMES) >= 10 and SHAPE_NAMES[:6] == (
        "circle", "square", "triangle", "star", "cross", "ring")


def test_same_parameters_reuse_the_folder_without_rewriting(tmp_path):
    root = tmp_path / "d"
    synthesize(root, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    summary = synthesize(root, **SMALL)
    assert summary.reused and summary.counts == {"train": 12, "val": 3}
    assert "nothing written" in summary.describe()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_interrupted_run_is_redone(tmp_path):
    root = tmp_path / "d"
    synthesize(root, **SMALL)
    expected = digests(root)
    meta = json.loads((root / "synth.json").read_text())
    meta["complete"] = False
    (root / "synth.json").write_text(json.dumps(meta))
    victim = next(root.rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:20])  # a file cut off mid-write
    summary = synthesize(root, **SMALL)
    assert not summary.reused
    assert digests(root) == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(classes=1), "classes=1"),
    (dict(classes=len(SHAPE_NAMES) + 1), "available shapes"),
    (dict(per_class=1), "per_class=1"),
    (dict(per_class=2, val_fraction=0.2), "0 val"),   # round(0.4) == 0
    (dict(per_class=4, val_fraction=0.9), "0 train"),  # round(3.6) == 4
    (dict(val_fraction=0.0), "val_fraction"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(size=31), "size=31"),
    (dict(seed=-1), "seed=-1"),
    (dict(quality=0), "quality=0"),
    (dict(workers=0), "workers=0"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(CnnlabError, match=message):
        synthesize(tmp_path / "d", **{**SMALL, **kwargs})
    assert not (tmp_path / "d").exists()  # nothing written before the check


def test_refuses_folder_with_other_content(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(CnnlabError, match="not empty"):
        synthesize(root, **SMALL)
    assert [p.name for p in root.iterdir()] == ["holiday.jpg"]


def test_refuses_dataset_made_with_other_parameters(tmp_path):
    root = tmp_path / "d"
    synthesize(root, **SMALL)
    before = digests(root)
    with pytest.raises(CnnlabError, match="seed 0 there, 5 asked"):
        synthesize(root, **{**SMALL, "seed": 5})
    assert digests(root) == before


def test_refuses_a_file_as_output(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(CnnlabError, match="not a folder"):
        synthesize(target, **SMALL)


def test_empty_existing_folder_is_used(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    assert synthesize(root, **SMALL).counts["train"] == 12


# --------------------------------------------------------------------------------------------
# the sparse kind and TIFF files
# --------------------------------------------------------------------------------------------

SPARSE = dict(classes=2, per_class=2, val_fraction=0.5, size=sparse.MIN_SIZE, seed=0, kind="sparse")


@pytest.mark.parametrize("size", [sparse.MIN_SIZE, 8000])
def test_sparse_layout_puts_a_handful_of_objects_among_many_distractors(size):
    """Laid out, not drawn (a scene costs no pixels): most 512 px squares of the file, a 256 px tile at
    scale 0.5, hold no class object."""
    scene = sparse.layout("star", size, np.random.default_rng([0, 1, 2]), (0, 1, 2))
    assert sparse.OBJECTS_PER_IMAGE[0] <= len(scene.centres) <= sparse.OBJECTS_PER_IMAGE[1]
    pastes = [item for item in scene.items if item[0] == "paste"]
    assert len(pastes) - len(scene.centres) == round(sparse.DISTRACTORS_PER_MEGAPIXEL * size * size / 1e6)
    tiles = (size // 512) ** 2
    with_object = {(y // 512, x // 512) for x, y in scene.centres}
    assert len(with_object) / tiles <= 8 / 16  # at the smallest size; at 8000 px 8 of 225 tiles at most
    assert all(0 <= x < size and 0 <= y < size for x, y in scene.centres)


def test_sparse_objects_stand_out_and_regions_are_seamless():
    scene = sparse.layout("cross", sparse.MIN_SIZE, np.random.default_rng([3, 0, 1]), (3, 0, 1))
    whole = sparse.render_region(scene, 0, 0, scene.size, scene.size)
    # any region, tile-aligned or not, is the same pixels as the whole image there
    assert np.array_equal(sparse.render_region(scene, 300, 517, 901, 1100), whole[517:1100, 300:901])
    luma = whole.astype(float) @ np.array([0.299, 0.587, 0.114])
    for x, y in scene.centres:  # light on dark: the drawing contract the other kinds keep
        assert luma[y - 1:y + 2, x - 1:x + 2].mean() > np.median(luma[y - 60:y + 60, x - 60:x + 60]) + 40


def test_sparse_tiff_is_tiled_pyramidal_and_reads_back_as_drawn(tmp_path):
    root = tmp_path / "sparse"
    summary = synthesize(root, file_format="tiff", **SPARSE)
    assert summary.counts == {"train": 2, "val": 2} and summary.file_format == "tiff"
    path = root / "train" / "cross" / "cross_0000.tif"
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
        assert [level.shape for level in tif.series[0].levels] == [(2048, 2048, 3), (1024, 1024, 3)]
    drawn = sparse.render_region(sparse.layout("cross", 2048, np.random.default_rng([0, 0, 0]), (0, 0, 0)),
                                 0, 0, 2048, 2048)
    pixels = read_image(path).permute(1, 2, 0).numpy()
    assert np.abs(pixels.astype(int) - drawn).mean() < 6  # JPEG at quality 90 on grain
    assert synthesize(root, file_format="tiff", **SPARSE).reused
    with pytest.raises(CnnlabError, match="format 'tiff' there"):
        synthesize(root, **SPARSE)
    meta = json.loads((root / "synth.json").read_text())["parameters"]
    assert meta["kind"] == "sparse" and meta["object_size"] == sparse.OBJECT_SIZE and meta["format"] == "tiff"


def test_sparse_tiff_bytes_depend_only_on_the_arguments(tmp_path):
    for name in ("a", "b"):
        _write_one(4, 1, 3, sparse.MIN_SIZE, 90, tmp_path / f"{name}.tif", "sparse", "tiff")
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()


def test_objects_kind_as_tiff_holds_the_jpegs_pixels(tmp_path):
    synthesize(tmp_path / "j", classes=2, per_class=2, val_fraction=0.5, size=600, kind="objects")
    synthesize(tmp_path / "t", classes=2, per_class=2, val_fraction=0.5, size=600, kind="objects",
               file_format="tiff")
    jpeg = read_image(tmp_path / "j" / "train" / "cross" / "cross_0000.jpg").float()
    tiff = read_image(tmp_path / "t" / "train" / "cross" / "cross_0000.tif").float()
    assert (jpeg - tiff).abs().mean() < 1.0  # one encoder, two containers


def test_pyramid_levels_halve_down_to_the_minimum_side():
    assert pyramid_factors(1024) == [1]
    assert pyramid_factors(4000) == [1, 2]
    assert pyramid_factors(20_000) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="sparse", size=2000), "at least 2048"),
    (dict(kind="sparse", size=9000), "--format tiff"),  # refused before anything is drawn
    (dict(file_format="png"), "choose one of jpeg, tiff"),
    (dict(kind="tiles"), "shapes, objects, sparse"),
])
def test_bad_sparse_and_format_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(CnnlabError, match=message):
        synthesize(tmp_path / "d", **{**SMALL, **kwargs})
    assert not (tmp_path / "d").exists()


def test_images_over_the_default_pixel_cap_say_how_to_read_them():
    summary = SynthSummary("d", ["cross", "star"], {"train": 2, "val": 2}, 20_000, "tiff", 1.0)
    assert "--max-pixels 400000000" in summary.describe()
