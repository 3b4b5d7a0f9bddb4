"""cnnlab.datacheck and `cnnlab data check`: a small messy dataset, every problem found with its severity."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.data.check import CSV_COLUMNS, check_dataset, safe_path
from cnnlab.data.findings import COPY_PROBLEMS, SAME_PICTURE, FileFacts, duplicate_findings, edge_similarity
from cnnlab.errors import CnnlabError
from .test_images import (write_16bit_png, write_animated_gif, write_cmyk_jpeg, write_exif6_jpeg, write_good_jpeg,
                         write_palette_png, write_png_bomb, write_rgba_png, write_text_as_jpeg,
                         write_truncated_jpeg)

BAD_NAME = os.fsdecode(b"bad\xff.jpg")  # not UTF-8: a lone surrogate in Python's str

# (path relative to the dataset, severity, problem) for everything the messy dataset holds.
EXPECTED = {
    ("train/cat/zero.jpg", "error", "empty-file"),
    ("train/cat/notes.jpg", "error", "not-an-image"),
    ("train/cat/cut.jpg", "error", "truncated-or-corrupt"),
    ("train/cat/bomb.png", "error", "over-pixel-cap"),
    ("train/cat/cmyk.jpg", "info", "unusual-mode"),
    ("train/cat/rgba.png", "info", "unusual-mode"),
    ("train/cat/g16.png", "info", "unusual-mode"),
    ("train/cat/pal.png", "info", "unusual-mode"),
    ("train/cat/turned.jpg", "info", "exif-rotated"),
    ("train/cat/anim.gif", "info", "unusual-mode"),
    ("train/cat/anim.gif", "info", "multi-frame"),
    ("train/cat/.DS_Store", "warning", "hidden-ignored"),
    ("train/cat/.ipynb_checkpoints", "warning", "hidden-ignored"),
    ("train/dog/bad\\xff.jpg", "warning", "non-utf8-name"),
    ("train/dog/dog0.jpg", "warning", "split-leakage"),
    ("val/dog/leak.jpg", "warning", "split-leakage"),
    ("train/bird/bird0.jpg", "warning", "duplicate"),
    ("train/bird/bird1.jpg", "warning", "duplicate"),
    ("val/bird", "warning", "empty-class"),
    ("test/cat/loop", "warning", "symlink-loop"),  # not followed, so nothing inside it is read twice
    # the small odd-mode fixtures are flat colours of 32x24 px or less: a person would flag them too
    ("train/cat/cmyk.jpg", "warning", "tiny-image"), ("train/cat/cmyk.jpg", "warning", "near-uniform"),
    ("train/cat/rgba.png", "warning", "tiny-image"), ("train/cat/rgba.png", "warning", "near-uniform"),
    ("train/cat/g16.png", "warning", "tiny-image"), ("train/cat/g16.png", "warning", "near-uniform"),
    ("train/cat/pal.png", "warning", "tiny-image"),
    ("train/cat/anim.gif", "warning", "tiny-image"), ("train/cat/anim.gif", "warning", "near-uniform"),
    ("train/cat/turned.jpg", "warning", "tiny-image"),
    (".", "warning", "class-imbalance"),  # train: cat 9 readable images, bird 3
}
UNREADABLE = ["train/cat/zero.jpg", "train/cat/notes.jpg", "train/cat/cut.jpg", "train/cat/bomb.png"]


@pytest.fixture
def messy(tmp_path) -> Path:
    """train/ val/ test/ with three classes and one of every problem the check knows."""
    root = tmp_path / "data"
    seed = iter(range(1000))  # a new seed per good image: no accidental duplicates
    for split, per_class in [("train", 3), ("val", 1), ("test", 1)]:
        for name in (["cat"] if split == "test" else ["cat", "dog", "bird"]):
            for i in range(per_class):
                write_good_jpeg(root / split / name / f"{name}{i}.jpg", seed=next(seed))
    cat = root / "train" / "cat"
    (cat / "zero.jpg").write_bytes(b"")
    write_text_as_jpeg(cat / "notes.jpg")
    write_truncated_jpeg(cat / "cut.jpg")
    write_png_bomb(cat / "bomb.png")
    write_cmyk_jpeg(cat / "cmyk.jpg")
    write_rgba_png(cat / "rgba.png")
    write_16bit_png(cat / "g16.png")
    write_palette_png(cat / "pal.png")
    write_exif6_jpeg(cat / "turned.jpg")
    write_animated_gif(cat / "anim.gif")
    (cat / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    write_good_jpeg(cat / ".ipynb_checkpoints" / "cat0-checkpoint.jpg", seed=next(seed))
    write_good_jpeg(root / "train" / "dog" / BAD_NAME, seed=next(seed))
    (root / "train" / "bird" / "bird1.jpg").unlink()
    shutil.copy(root / "train" / "bird" / "bird0.jpg", root / "train" / "bird" / "bird1.jpg")  # within a split
    shutil.copy(root / "train" / "dog" / "dog0.jpg", root / "val" / "dog" / "leak.jpg")  # across splits
    (root / "val" / "bird" / "bird0.jpg").unlink()  # an empty class folder (in val: reported, not fatal)
    os.symlink("..", root / "test" / "cat" / "loop")  # test/ holds only cat, so the loop reaches nothing new
    return root


def _found(report, root: Path) -> set[tuple[str, str, str]]:
    return {(os.path.relpath(p.path, safe_path(root)), p.severity, p.problem) for p in report.problems}


def _file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (links not followed), by relative path."""
    hashes = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                hashes[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return hashes


def test_every_problem_is_found_with_its_severity(messy):
    report = check_dataset(messy, workers=2)
    assert _found(report, messy) == EXPECTED
    assert report.severity_counts() == {"fatal": 0, "error": 4, "warning": 20, "info": 7}
    assert not report.usable and report.exit_code == 1
    assert "4 unreadable file(s) left" in report.reasons[0]


def test_counts_sizes_and_layout(messy):
    report = check_dataset(messy, workers=2)
    assert report.layout == "folders" and report.classes == ["bird", "cat", "dog"]
    assert report.counts == {"train": {"bird": 3, "cat": 9, "dog": 4}, "val": {"bird": 0, "cat": 1, "dog": 2},
                             "test": {"cat": 1}}
    assert report.unreadable["train"] == {"bird": 0, "cat": 4, "dog": 0}
    # 64x48 JPEGs; 32x24 CMYK/RGBA/16-bit/palette; the EXIF-turned 20x40 (upright); the 16x16 GIF
    assert report.sizes["width"] == {"min": 16, "median": 64, "max": 64}
    assert report.sizes["height"] == {"min": 16, "median": 48, "max": 48}
    assert report.sizes["megapixels"]["max"] == pytest.approx(64 * 48 / 1e6)
    json.dumps(report.to_dict())  # plain data all the way down


def test_problem_details_say_what_and_where(messy):
    by_key = {(os.path.relpath(p.path, safe_path(messy)), p.problem): p for p in check_dataset(messy).problems}
    assert "pixel cap" in by_key["train/cat/bomb.png", "over-pixel-cap"].detail
    assert "CMYK" in by_key["train/cat/cmyk.jpg", "unusual-mode"].detail
    assert "16-bit" in by_key["train/cat/g16.png", "unusual-mode"].detail
    assert "3 frames" in by_key["train/cat/anim.gif", "multi-frame"].detail
    leak = by_key["val/dog/leak.jpg", "split-leakage"]
    assert leak.split == "val" and leak.class_name == "dog"
    assert "LEAKAGE" in leak.detail and "train/dog/dog0.jpg" in leak.detail
    assert "1 image file(s) inside" in by_key["train/cat/.ipynb_checkpoints", "hidden-ignored"].detail
    assert "cat has 9 images, bird only 3 (3.0x)" in by_key[".", "class-imbalance"].detail
    assert "not followed" in by_key["test/cat/loop", "symlink-loop"].detail
    assert by_key["train/dog/bad\\xff.jpg", "non-utf8-name"].path.endswith("bad\\xff.jpg")


def test_describe_says_leakage_loudly_and_prints_safely(messy):
    text = check_dataset(messy).describe()
    assert "!!! LEAKAGE" in text and "NOT usable" in text
    assert "bad\\xff.jpg" in text
    text.encode("utf-8")  # no lone surrogates: prints on any terminal


def test_fix_report_csv_has_every_problem(messy, tmp_path):
    out = tmp_path / "reports" / "fix.csv"
    report = check_dataset(messy, fix_report=out)
    with open(out, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert len(rows) == len(report.problems) == len(EXPECTED)
    found = {(os.path.relpath(r["path"], safe_path(messy)), r["severity"], r["problem"]) for r in rows}
    assert found == EXPECTED
    zero = next(r for r in rows if r["path"].endswith("zero.jpg"))
    assert (zero["split"], zero["class"], zero["detail"]) == ("train", "cat", "the file is empty (0 bytes)")


def test_quarantine_moves_exactly_the_unreadable_files(messy, tmp_path):
    before = _file_hashes(messy)
    quarantine = tmp_path / "quarantine"
    report = check_dataset(messy, quarantine=quarantine)
    after = _file_hashes(messy)
    assert sorted(after) == sorted(set(before) - set(UNREADABLE))
    assert all(after[path] == before[path] for path in after)  # nothing else touched or rewritten
    assert _file_hashes(quarantine) == {path: before[path] for path in UNREADABLE}  # moved, same bytes
    assert sorted(os.path.relpath(src, safe_path(messy)) for src, _ in report.quarantined) == sorted(UNREADABLE)
    assert report.usable and report.exit_code == 0
    assert "moved 4 unreadable file(s) aside" in report.describe()
    assert check_dataset(messy).severity_counts()["error"] == 0  # a second check finds them gone


def test_quarantine_inside_the_dataset_is_refused(messy):
    before = _file_hashes(messy)
    with pytest.raises(CnnlabError, match="inside the dataset"):
        check_dataset(messy, quarantine=messy / "bad")
    assert _file_hashes(messy) == before


def test_parallel_and_serial_checks_agree(messy):
    assert check_dataset(messy, workers=1).to_dict() == check_dataset(messy, workers=4).to_dict()


def test_flat_layout_duplicates_and_usable(tmp_path):
    root = tmp_path / "flat"
    for name, seeds in [("ants", [1, 2, 3]), ("bees", [4, 5])]:
        for seed in seeds:
            write_good_jpeg(root / name / f"{seed}.jpg", seed=seed)
    shutil.copy(root / "ants" / "1.jpg", root / "ants" / "copy.jpg")
    report = check_dataset(root)
    assert report.layout.startswith("seeded split") and report.counts == {"all": {"ants": 4, "bees": 2}}
    assert _found(report, root) == {("ants/1.jpg", "warning", "duplicate"), ("ants/copy.jpg", "warning", "duplicate")}
    assert "seeded train/val split may put copies on both sides" in report.problems[0].detail
    assert report.usable and report.exit_code == 0


def _placeholder(path: Path, shade: int = 0) -> Path:
    """An "image not found" placeholder: grey box, a cross, some text-like bars (what photo sites serve)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (120, 90), (200 + shade, 200 + shade, 200 + shade))
    draw = ImageDraw.Draw(image)
    draw.line((10, 10, 110, 80), fill=(90, 90, 90), width=3)
    draw.line((10, 80, 110, 10), fill=(90, 90, 90), width=3)
    draw.rectangle((30, 40, 90, 50), fill=(40, 40, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_what_a_person_would_spot(tmp_path):
    """A placeholder GIF among JPEGs (and re-saved copies of it), a 4.4x imbalance, a label conflict across
    splits, an extreme aspect ratio: each found as its own problem, and a label conflict is not leakage."""
    root = tmp_path / "photos"
    for i in range(22):
        write_good_jpeg(root / "train" / "dogs" / f"d{i}.jpg", seed=i)
    for i in range(5):
        write_good_jpeg(root / "train" / "cats" / f"c{i}.jpg", seed=100 + i)
    _placeholder(root / "train" / "dogs" / "missing.gif")                     # 1 GIF among 22 JPEGs
    from cnnlab.data.images import save_image, read_image
    save_image(read_image(root / "train" / "dogs" / "missing.gif"), root / "train" / "cats" / "missing2.jpg")
    _placeholder(root / "train" / "cats" / "missing3.png", shade=3)          # re-drawn, slightly lighter
    write_good_jpeg(root / "val" / "dogs" / "v.jpg", seed=300)
    (root / "val" / "cats").mkdir()
    shutil.copy(root / "train" / "dogs" / "d0.jpg", root / "val" / "cats" / "d0.jpg")  # same picture, other label
    write_good_jpeg(root / "train" / "dogs" / "strip.jpg", height=40, width=400, seed=400)
    found = _found(check_dataset(root, workers=2), root)
    assert ("train/dogs/missing.gif", "warning", "format-outlier") in found
    # the placeholder and its re-encoded, re-drawn copies: every two the same picture, so one group across classes
    assert {("train/dogs/missing.gif", "warning", "label-conflict"),
            ("train/cats/missing2.jpg", "warning", "label-conflict"),
            ("train/cats/missing3.png", "warning", "label-conflict")} <= found
    assert ("val/cats/d0.jpg", "warning", "label-conflict") in found
    assert not any(problem == "split-leakage" for _, _, problem in found)  # a conflict, not a leak
    assert (".", "warning", "class-imbalance") in found
    assert ("train/dogs/strip.jpg", "warning", "extreme-aspect") in found
    # and nothing else: 22 different photos are not near-duplicates of each other
    assert not any(path.startswith("train/dogs/d") and problem.startswith("near")
                   for path, _, problem in found)


# --------------------------------------------------------------------------------------------
# near-duplicates: a fingerprint proposes, the thumbnails' edges confirm, and only pairs are joined
# --------------------------------------------------------------------------------------------

SHAPES = ("bottle", "jar", "sheet", "box", "ball", "cone")


def _product_photo(path: Path, shape: str, size: float, x: float, seed: int, falloff: float = 45) -> Path:
    """A product shot: one object (`size`: share of the height, centred at `x`: share of the width) on a studio-white
    background, `falloff` grey levels darker in the corners than in the middle, with sensor noise, as JPEG."""
    from PIL import Image, ImageDraw

    width, height = 240, 180
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    light = 248 - 2 * falloff * (((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2)  # (H, W)
    image = Image.fromarray(np.repeat(light[..., None], 3, axis=2).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s, cx, cy = size * height, x * width, height / 2
    colour = tuple(int(c) for c in rng.integers(30, 180, 3))
    if shape == "bottle":
        draw.rectangle((cx - 0.3 * s, cy - 0.3 * s, cx + 0.3 * s, cy + s), fill=colour)
        draw.rectangle((cx - 0.1 * s, cy - s, cx + 0.1 * s, cy - 0.3 * s), fill=colour)
    elif shape == "jar":
        draw.rounded_rectangle((cx - 0.6 * s, cy - 0.5 * s, cx + 0.6 * s, cy + 0.7 * s), radius=0.2 * s, fill=colour)
    elif shape == "sheet":
        draw.polygon([(cx - 1.3 * s, cy + 0.3 * s), (cx + s, cy + 0.4 * s), (cx + 1.3 * s, cy - 0.2 * s),
                      (cx - 0.9 * s, cy - 0.3 * s)], fill=colour)
    elif shape == "box":
        draw.rectangle((cx - 0.8 * s, cy - 0.6 * s, cx + 0.8 * s, cy + 0.6 * s), fill=colour)
    elif shape == "ball":
        draw.ellipse((cx - 0.7 * s, cy - 0.7 * s, cx + 0.7 * s, cy + 0.7 * s), fill=colour)
    else:
        draw.polygon([(cx, cy - s), (cx + 0.8 * s, cy + 0.8 * s), (cx - 0.8 * s, cy + 0.8 * s)], fill=colour)
    if seed % 2:  # a label on every other product
        label = tuple(int(c) for c in rng.integers(150, 255, 3))
        draw.rectangle((cx - 0.25 * s, cy, cx + 0.25 * s, cy + 0.3 * s), fill=label)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 2.0, (height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def _dhash(path: Path) -> int:
    """The 64-bit difference hash the check once grouped near-duplicates by: signs of 8x9 neighbour differences."""
    from PIL import Image

    small = np.asarray(Image.open(path).convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return int(np.packbits((small[:, :-1] > small[:, 1:]).ravel()).view(">u8")[0])


def _copy_findings(report, root: Path) -> dict[frozenset, tuple[str, float | None]]:
    """{files of a finding: (problem, lowest similarity)} for the duplicate-like findings, each once."""
    found = {}
    for p in report.problems:
        if p.problem in COPY_PROBLEMS:
            files = frozenset(os.path.relpath(q.path, safe_path(root)) for q in report.problems
                              if q.problem == p.problem and q.detail == p.detail)
            match = re.search(r"similarity (\d\.\d+)", p.detail)
            found[files] = (p.problem, float(match.group(1)) if match else None)
    return found


@pytest.mark.parametrize("falloff", [45, 0])
def test_different_products_on_one_background_are_not_copies_and_real_copies_are(tmp_path, falloff):
    """36 different objects on one white background (lit with a falloff to the corners, or evenly): none is a copy
    of another. Copies placed in other splits and classes (re-encoded, half size, both) are each found as one
    pair, with its similarity. With a falloff the objects' dHashes chain into one group across the classes (what
    the check once reported as one picture with many labels); lit evenly the copies' dHashes are far apart."""
    from PIL import Image

    root = tmp_path / "products"
    photos = {}
    for k, (shape, size, x) in enumerate(itertools.product(SHAPES, (0.15, 0.22, 0.3), (0.4, 0.6))):
        split = "val" if k % 3 == 0 else "train"
        photos[shape, size, x] = _product_photo(root / split / shape / f"{shape}-{size}-{x}.jpg", shape, size, x, k,
                                                falloff)
    assert _copy_findings(check_dataset(root, workers=2), root) == {}

    bottle, jar, ball = photos["bottle", 0.3, 0.4], photos["jar", 0.22, 0.6], photos["ball", 0.3, 0.6]
    for folder in ("bottle", "jar"):
        (root / "test" / folder).mkdir(parents=True)
    Image.open(bottle).save(root / "test" / "bottle" / "again.jpg", quality=50)  # re-encoded, in another split
    half = (120, 90)
    Image.open(jar).resize(half, Image.Resampling.LANCZOS).save(root / "test" / "jar" / "half.png")  # half size
    Image.open(ball).resize(half, Image.Resampling.BILINEAR).save(root / "train" / "cone" / "ball.jpg", quality=60)
    report = check_dataset(root, workers=2)
    found = _copy_findings(report, root)
    rel = lambda path: os.path.relpath(path, root)  # noqa: E731
    copies = {frozenset({rel(bottle), "test/bottle/again.jpg"}): "near-duplicate-leakage",
              frozenset({rel(jar), "test/jar/half.png"}): "near-duplicate-leakage",
              frozenset({rel(ball), "train/cone/ball.jpg"}): "label-conflict"}
    assert {files: problem for files, (problem, _) in found.items()} == copies
    assert all(SAME_PICTURE <= similarity <= 1 for _, similarity in found.values())
    text = report.describe()  # each pair once, with its similarity
    assert text.count("test/bottle/again.jpg") == 1 and text.count("similarity") == 3
    assert "LEAKAGE: 4 files in 2 findings" in text and "LABEL CONFLICT: 2 files in 1 finding" in text

    # what a dHash (the check's first step before) makes of the same files
    hashes = {rel(path): _dhash(path) for path in root.rglob("*.*")}
    bits = lambda a, b: bin(hashes[a] ^ hashes[b]).count("1")  # noqa: E731
    if falloff:  # different products within 4 bits, chained across the classes
        close = [(a, b) for a, b in itertools.combinations(map(rel, photos.values()), 2) if bits(a, b) <= 4]
        assert len(close) >= 20 and len({Path(path).parent.name for pair in close for path in pair}) == 6
    else:  # copies more than 4 bits apart
        assert all(bits(*sorted(files)) > 4 for files in copies)


def _thumbnail(weight: float) -> bytes:
    """A 32x32 grey thumbnail: one smooth pattern plus `weight` times another (the edges change linearly)."""
    y, x = np.mgrid[0:32, 0:32] / 32
    first = np.sin(3.5 * x + 4.7 * y + 1.0) + np.cos(2.6 * x - 5.1 * y + 4.0)
    second = np.sin(5.3 * x + 2.2 * y + 2.5) + np.cos(4.4 * x - 3.0 * y + 0.5)
    return np.clip(128 + 30 * first + 30 * weight * second, 0, 255).round().astype(np.uint8).tobytes()


def _facts(name: str, thumbnail: bytes, class_name: str = "a") -> FileFacts:
    return FileFacts(f"train/{class_name}/{name}.png", "train", class_name, "PNG", 320, 240, name, 40.0, thumbnail)


def test_near_copies_are_joined_only_when_every_two_are_the_same_picture():
    """A like B and B like C while A is not like C: two pairs, never one group of three. Six pictures that are all
    alike: one group, whose every row names all six files (the --fix-report CSV holds the rows as they are)."""
    a, b, c = (_facts(name, _thumbnail(0.4 * k)) for k, name in enumerate("ABC"))
    assert edge_similarity(a.thumbnail, b.thumbnail) >= SAME_PICTURE
    assert edge_similarity(b.thumbnail, c.thumbnail) >= SAME_PICTURE
    assert edge_similarity(a.thumbnail, c.thumbnail) < SAME_PICTURE
    rows = duplicate_findings([a, b, c], flat=False)
    findings = {frozenset(row[0] for row in rows if row[5] == detail) for detail in {row[5] for row in rows}}
    assert findings == {frozenset({a.path, b.path}), frozenset({b.path, c.path})}
    assert {row[4] for row in rows} == {"near-duplicate"} and len(rows) == 4  # B is in two findings

    alike = [_facts(f"p{k}", _thumbnail(0.05 * k), class_name="ab"[k % 2]) for k in range(6)]
    rows = duplicate_findings(alike, flat=False)
    assert len(rows) == 6 and len({row[5] for row in rows}) == 1 and {row[4] for row in rows} == {"label-conflict"}
    assert all(f.path in rows[0][5] for f in alike) and "more" not in rows[0][5]
    assert rows[0][5].startswith("6 pictures, every two nearly the same (similarity 0.9")


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: write_good_jpeg(root / "only" / "a.jpg"), "at least two"),
    (lambda root: (write_good_jpeg(root / "train" / "a" / "1.jpg"), (root / "train" / "b").mkdir()),
     "no images"),
])
def test_fatal_layouts_are_reported_not_raised(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    report = check_dataset(root)
    fatal = [p for p in report.problems if p.severity == "fatal"]
    assert len(fatal) == 1 and message in fatal[0].detail
    assert report.exit_code == 1 and message in report.describe()


def test_empty_training_class_is_a_warning_and_makes_the_data_unusable(tmp_path):
    root = tmp_path / "data"
    write_good_jpeg(root / "train" / "a" / "1.jpg", seed=1)
    write_good_jpeg(root / "train" / "b" / "1.jpg", seed=2)
    (root / "train" / "c").mkdir()
    report = check_dataset(root)
    assert ("train/c", "warning", "empty-class") in _found(report, root)
    assert report.exit_code == 1


# --------------------------------------------------------------------------------------------
# the CLI: thin, exit codes 0/1
# --------------------------------------------------------------------------------------------


def test_cli_exit_codes_and_outputs(messy, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(messy), "--workers", "2",
                                 "--fix-report", str(tmp_path / "fix.csv")])
    assert result.exit_code == 1, result.output
    assert "LEAKAGE" in result.stdout and "NOT usable" in result.stdout
    assert (tmp_path / "fix.csv").exists()
    result = runner.invoke(app, ["data", "check", str(messy), "--quarantine", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    assert "usable for training (exit code 0)" in result.stdout
    assert (tmp_path / "q" / "train" / "cat" / "cut.jpg").exists()


def test_cli_max_pixels_makes_large_images_errors(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        write_good_jpeg(root / name / "1.jpg", height=48, width=64, seed=ord(name))
    result = CliRunner().invoke(app, ["data", "check", str(root), "--max-pixels", "1000"])
    assert result.exit_code == 1 and "over the pixel cap" in result.stdout


def test_cli_help():
    result = CliRunner().invoke(app, ["data", "check", "--help"])
    assert result.exit_code == 0
    assert all(flag in result.stdout for flag in ("--fix-report", "--quarantine", "--max-pixels", "--workers"))
