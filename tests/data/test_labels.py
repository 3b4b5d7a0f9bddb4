"""Label files (cnnlab.data.labels): a CSV of path,label[,split] gives the splits the same images in class folders give;
its bad rows are reported by the data check and skipped by training; a run trained from one evaluates again."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnlab.config import TrainConfig
from cnnlab.data.check import check_dataset
from cnnlab.data.folders import SPLIT_FOLDERS, find_samples
from cnnlab.data.images import is_image_file, save_image
from cnnlab.data.labels import LABEL_FILE, label_file, read_labels
from cnnlab.errors import CnnlabError
from cnnlab.training.setup import find_splits
from .test_images import write_text_as_jpeg


def _images(root: Path, counts: dict[str, int]) -> list[Path]:
    """Random 20x30 PNGs root/<class>/<class>_NNN.png (counts per class); returns their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for name, n in counts.items():
        for i in range(n):
            path = root / name / f"{name}_{i:03d}.png"
            save_image(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), path)
            paths.append(path)
    return paths


def _write_csv(path: Path, header: list[str], rows: list[list[str]], prefix: str = "", delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        file.write(prefix)
        writer = csv.writer(file, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _rows_of(root: Path, splits: bool, absolute_every: int = 0, base: Path | None = None) -> list[list[str]]:
    """path,label[,split] rows for the images under root's class (or split/class) folders, in reverse order (a CSV
    is in no particular order); paths relative to `base` (default root), every `absolute_every`-th one absolute."""
    base = base or root
    rows = []
    for k, image in enumerate(sorted((p for p in root.rglob("*") if is_image_file(p)), reverse=True)):
        parts = image.relative_to(root).parts
        shown = str(image) if absolute_every and k % absolute_every == 0 else os.path.relpath(image, base)
        rows.append([shown, parts[-2]] + ([parts[0]] if splits else []))
    return rows


def _same_splits(a, b) -> None:
    assert a.classes == b.classes
    assert list(a.splits) == list(b.splits)
    for split in a.splits:
        assert a.splits[split] == b.splits[split], split  # same files, same labels, same order


def test_split_column_gives_what_split_folders_give(tmp_path):
    images = tmp_path / "images"
    for split, counts in {"train": {"cat": 4, "dog": 3, "fox": 3}, "validation": {"cat": 1, "dog": 2, "fox": 1},
                          "test": {"cat": 1, "dog": 1, "fox": 2}}.items():
        _images(images / split, counts)
    folder = find_samples(images)
    # the CSV in a sibling folder: relative paths go through "..", every third path is absolute
    table = _write_csv(tmp_path / "meta" / "annotations.csv", ["path", "label", "split"],
                       _rows_of(images, splits=True, absolute_every=3, base=tmp_path / "meta"))
    shown = [row[0] for row in csv.reader(table.read_text().splitlines())]
    assert any(path.startswith("../images/") for path in shown) and any(path.startswith("/") for path in shown)
    labelled = find_samples(table)
    _same_splits(labelled, folder)
    assert labelled.counts() == {"train": {"cat": 4, "dog": 3, "fox": 3}, "val": {"cat": 1, "dog": 2, "fox": 1},
                                 "test": {"cat": 1, "dog": 1, "fox": 2}}
    assert labelled.root == str(table) and labelled.split_source == "split column of annotations.csv"
    assert labelled.notes == []  # "validation" is a split name here as it is a split folder's


def test_without_split_column_the_folders_automatic_split_is_used(tmp_path):
    _images(tmp_path / "flat", {"b": 9, "a": 7, "c": 5})
    folder = find_samples(tmp_path / "flat", val_fraction=0.3, seed=5)
    table = _write_csv(tmp_path / "flat" / "list.csv", ["path", "label"], _rows_of(tmp_path / "flat", splits=False))
    labelled = find_samples(table, val_fraction=0.3, seed=5)
    _same_splits(labelled, folder)
    assert labelled.split_source == folder.split_source == "seeded split (val_fraction=0.3, seed=5)"
    assert labelled.counts()["val"] == {"a": 2, "b": 3, "c": 2}
    assert find_samples(table, val_fraction=0.3, seed=6).splits["val"] != labelled.splits["val"]


def test_train_rows_alone_get_a_val_split_as_a_train_folder_alone_does(tmp_path):
    _images(tmp_path / "data" / "train", {"x": 6, "y": 6})
    folder = find_samples(tmp_path / "data", val_fraction=0.5, seed=1)
    table = _write_csv(tmp_path / "t.csv", ["path", "label", "split"], _rows_of(tmp_path / "data", splits=True,
                                                                                base=tmp_path))
    labelled = find_samples(table, val_fraction=0.5, seed=1)
    _same_splits(labelled, folder)
    assert labelled.split_source == "train rows of t.csv, val split from it (val_fraction=0.5, seed=1)"


def test_a_folder_holding_labels_csv_is_read_through_it(tmp_path):
    images = _images(tmp_path / "shots", {"ant": 3, "bee": 3})
    # the files by name in one folder, as a Kaggle download has them: only the CSV says which class each is
    for path in images:
        path.rename(tmp_path / "shots" / path.name)
    rows = [[path.name, path.parent.name, "train" if path.stem.endswith(("0", "1")) else "val"] for path in images]
    _write_csv(tmp_path / "shots" / LABEL_FILE, ["path", "label", "split"], rows)
    assert label_file(tmp_path / "shots") == tmp_path / "shots" / LABEL_FILE
    found = find_samples(tmp_path / "shots")
    assert found.root == str(tmp_path / "shots" / LABEL_FILE)
    assert found.classes == ["ant", "bee"]
    assert found.counts() == {"train": {"ant": 2, "bee": 2}, "val": {"ant": 1, "bee": 1}}
    assert {Path(s.path).name for s in found.splits["val"]} == {"ant_002.png", "bee_002.png"}
    assert label_file(tmp_path) is None  # an image folder without labels.csv is scanned as before


def test_header_in_any_case_order_with_bom_spaces_extra_columns_or_semicolons(tmp_path):
    _images(tmp_path, {"cat": 3, "dog": 3})
    rows = _rows_of(tmp_path, splits=False)
    plain = find_samples(_write_csv(tmp_path / "plain.csv", ["path", "label"], rows))
    # Excel: a byte-order mark, capitalised names padded with spaces, columns in another order and one more
    excel = _write_csv(tmp_path / "excel.csv", [" Label ", "Score", "PATH "],
                       [[f" {label} ", "0.9", f"{path} "] for path, label in rows], prefix="\ufeff")
    _same_splits(find_samples(excel), plain)
    semicolons = _write_csv(tmp_path / "semi.csv", ["path", "label"], rows, delimiter=";")
    _same_splits(find_samples(semicolons), plain)
    # numeric labels sort as ImageFolder sorts folder names: as text
    numbers = _write_csv(tmp_path / "numbers.csv", ["path", "label"],
                         [[path, {"cat": "10", "dog": "9"}[label]] for path, label in rows])
    assert find_samples(numbers).classes == ["10", "9"]


@pytest.mark.parametrize("content,message", [
    ("file,class\na.png,cat\n", "has no path or label column (its header: file, class)"),
    ("path\na.png\n", "has no label column"),
    ("", "has no path or label column (its header: none)"),
    ("path,label\nmissing.png,cat\n,dog\n", "has no usable row (2 left out"),
    ("path,label\nimages/cat/cat_000.png,cat\nimages/cat/cat_001.png,cat\n", "1 label(s) with usable training rows"),
    ("path,label,split\nimages/cat/cat_000.png,cat,val\nimages/dog/dog_000.png,dog,test\n", "no row with split train"),
])
def test_an_unusable_label_file_is_one_clear_error_naming_it(tmp_path, content, message):
    _images(tmp_path / "images", {"cat": 2, "dog": 2})
    table = tmp_path / "bad.csv"
    table.write_text(content, encoding="utf-8")
    with pytest.raises(CnnlabError, match=f"^label file {table} ") as error:
        find_samples(table)
    assert message in str(error.value)


def test_a_label_file_that_is_not_utf8_or_not_there(tmp_path):
    (tmp_path / "latin1.csv").write_bytes("path,label\nb\xe9b\xe9.png,chat\n".encode("latin-1"))
    with pytest.raises(CnnlabError, match="latin1.csv is not UTF-8 text; save it as CSV UTF-8"):
        find_samples(tmp_path / "latin1.csv")
    with pytest.raises(CnnlabError, match="gone.csv does not exist"):
        find_samples(tmp_path / "gone.csv")


def _messy(tmp_path: Path) -> Path:
    """labels.csv over cat/dog images with one row of every kind that is left out, a repeated row and an unreadable
    image (a file that is no image)."""
    _images(tmp_path / "img", {"cat": 4, "dog": 5})
    write_text_as_jpeg(tmp_path / "img" / "notes.jpg")
    rows = [[f"img/{name}/{name}_{i:03d}.png", name, "val" if i == 0 else "train"]  # lines 2-9
            for name in ("cat", "dog") for i in range(4)]
    rows += [["img/cat/gone.png", "cat", "train"],  # 10: missing-file
             ["img/dog", "dog", "train"],  # 11: a folder, missing-file
             ["img/cat/cat_001.png", "dog", "train"],  # 12: conflicts with line 3: both rows left out
             ["img/dog/dog_002.png", " ", "train"],  # 13: empty-label (line 8 stands)
             ["img/dog/dog_003.png", "dog", "trian"],  # 14: unknown-split (line 9 stands)
             ["", "cat", "train"],  # 15: empty-path
             ["img/dog/dog_001.png", "dog", "train"],  # 16: line 7 again, read once
             ["img/notes.jpg", "cat", "train"],  # 17: a usable row naming an unreadable image
             ["img/dog/dog_004.png", "cow", "test"],  # 18: a label no train row has, unknown-label
             ["", "", ""]]  # 19: a blank row, nothing
    return _write_csv(tmp_path / LABEL_FILE, ["path", "label", "split"], rows)


def test_data_check_reports_bad_rows_like_unreadable_images(tmp_path):
    table = _messy(tmp_path)
    report = check_dataset(table, fix_report=tmp_path / "problems.csv", workers=1)
    errors = {(os.path.relpath(p.path, tmp_path) if p.path != str(table) else LABEL_FILE, p.problem)
              for p in report.problems if p.severity == "error"}
    assert errors == {("img/cat/gone.png", "missing-file"), ("img/dog", "missing-file"),
                      ("img/cat/cat_001.png", "conflicting-rows"), ("img/dog/dog_002.png", "empty-label"),
                      ("img/dog/dog_003.png", "unknown-split"), (LABEL_FILE, "empty-path"),
                      ("img/dog/dog_004.png", "unknown-label"), ("img/notes.jpg", "not-an-image")}
    details = {p.problem: p.detail for p in report.problems}
    assert {p.detail for p in report.problems if p.problem == "missing-file"} == {
        "labels.csv line 10: no such file", "labels.csv line 11: a folder, not an image file"}
    assert [(p.class_name, p.detail) for p in report.problems if p.problem == "conflicting-rows"] == [
        (label, "labels.csv lines 3, 12 disagree: cat (train); dog (train); keep the one right row for this file")
        for label in ("cat", "dog")]  # one per row, each with the label it gives
    assert "split 'trian' is not one of train, val, test" in details["unknown-split"]
    assert "did you mean 'train'?" in details["unknown-split"]
    assert details["duplicate-row"] == "labels.csv lines 7, 16 are the same row; read once"
    assert details["unknown-label"] == ("labels.csv line 18: label 'cow' has no train row, so the network cannot "
                                        "learn it")
    assert details["empty-path"] == "labels.csv line 15: no path given"
    assert not report.usable and report.exit_code == 1
    assert report.reasons == ["8 row(s) of the label file left out (training skips them): fix or remove them",
                              "1 unreadable file(s) left: fix or remove them, or move them aside with --quarantine DIR"]
    # counted as the folder check counts: readable images per split and class, the unreadable one apart
    assert report.counts == {"train": {"cat": 2, "dog": 3}, "val": {"cat": 1, "dog": 1}}
    assert report.unreadable["train"] == {"cat": 1, "dog": 0}
    with open(tmp_path / "problems.csv", newline="", encoding="utf-8") as file:
        written = {(row["path"], row["problem"]) for row in csv.DictReader(file) if row["severity"] == "error"}
    assert {(os.path.relpath(path, tmp_path) if path != str(table) else LABEL_FILE, problem)
            for path, problem in written} == errors
    assert "ERROR missing-file (2):" in report.describe()


def test_training_skips_bad_rows_with_one_warning_line(tmp_path, capsys):
    table = _messy(tmp_path)
    splits = find_splits(TrainConfig(data=str(table)))
    warning = capsys.readouterr().err.strip().splitlines()
    assert warning == [f"warning: left out 8 row(s) of {table} that cannot be trained on (missing files, empty "
                       f"labels, unknown splits, conflicting rows); `cnnlab data check {table}` lists them"]
    assert splits.counts() == {"train": {"cat": 3, "dog": 3}, "val": {"cat": 1, "dog": 1}}  # notes.jpg is in
    assert str(tmp_path / "img" / "cat" / "cat_001.png") not in {s.path for s in splits.splits["train"]}
    assert read_labels(table, SPLIT_FOLDERS).found["train"]["dog"] == [
        str(tmp_path / "img" / "dog" / f"dog_{i:03d}.png") for i in (1, 2, 3)]


def test_quarantine_of_a_label_files_unreadable_image_moves_it_and_keeps_the_csv(tmp_path):
    table = _messy(tmp_path)
    before = table.read_bytes()
    report = check_dataset(table, quarantine=tmp_path / "aside", workers=1)
    assert report.quarantined == [(str(tmp_path / "img" / "notes.jpg"), str(tmp_path / "aside" / "img" / "notes.jpg"))]
    assert (tmp_path / "aside" / "img" / "notes.jpg").read_text() == "this is not an image\n"
    assert table.read_bytes() == before


def test_fit_on_a_label_file_trains_and_evaluates_again(tmp_path):
    from cnnlab.commands.evaluate import evaluate
    from cnnlab.commands.train import fit
    from cnnlab.data.synth import synthesize

    synthesize(tmp_path / "shapes", classes=3, per_class=8, size=48, seed=0, val_fraction=0.25)
    table = _write_csv(tmp_path / "labels" / "shapes.csv", ["path", "label", "split"],
                       _rows_of(tmp_path / "shapes", splits=True, base=tmp_path / "labels")
                       + [["../shapes/train/circle/lost.jpg", "circle", "train"]])
    result = fit(data=str(table), model="simple_cnn", model_options={"widths": [8, 16]}, img_size=32, epochs=1,
                 batch_size=8, workers=0, cache="off", precision="fp32", out=str(tmp_path / "run"), verbose=False)
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    dataset = json.loads((result.run_dir / "dataset.json").read_text())
    assert config["data"] == str(table) and dataset["root"] == str(table)
    assert dataset["skipped_rows"] == 1
    assert dataset["counts"] == {"train": {"circle": 6, "square": 6, "triangle": 6},
                                 "val": {"circle": 2, "square": 2, "triangle": 2}}
    evaluation = evaluate(result.run_dir, split="val", workers=0, verbose=False)  # re-finds the splits from the CSV
    assert sorted(evaluation.paths) == sorted(s.path for s in find_samples(table).splits["val"])
    assert evaluation.accuracy == pytest.approx(result.history[result.best_epoch - 1]["val_acc"], abs=1e-6)
    report = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert f"Label file <code>{table}</code>; split: split column of shapes.csv" in report
    assert "1 row(s) of the label file were left out" in report
    resumed = fit(resume=result.run_dir, epochs=2, verbose=False)  # --resume finds its data again too
    assert [row["epoch"] for row in resumed.history] == [1, 2]
