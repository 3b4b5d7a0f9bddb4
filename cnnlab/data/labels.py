"""Label files: a CSV of path,label[,split] -- the form Kaggle and most annotation tools export -- read as the same
{split: {class: [files]}} that a data folder's class folders give (cnnlab.data.folders makes the splits of either).

    path,label,split
    images/0001.jpg,cat,train          relative paths resolve against the CSV's folder
    /data/extra/0002.jpg,dog,val       absolute paths are taken as they are

`--data` names the CSV itself, or a folder holding `labels.csv`. The header is required (any order, any case; other
columns are ignored); without a split column every row is labelled data and the folder rule holds out a seeded,
stratified val split. A row that cannot be trained on -- a missing file, no path, no label, an unknown split, a
file given two labels or splits, a val/test label no training row has -- is left out with a RowNote saying why:
`cnnlab data check` lists them like unreadable images, training skips them with one warning line.
"""

from __future__ import annotations

import csv
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import CnnlabError

LABEL_FILE = "labels.csv"  # looked for inside a folder given as --data
PATH, LABEL, SPLIT = "path", "label", "split"
# Problems of rows that are left out (severity "error"); a row repeated word for word is kept once ("warning").
ROW_PROBLEMS = ("missing-file", "empty-path", "empty-label", "unknown-split", "conflicting-rows", "unknown-label")
# Excel in many European locales saves "CSV" with semicolons, some tools with tabs: the header line tells which.
_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class RowNote:
    """A row of the label file that is left out (or, a repeated one, read once), and why."""

    path: str  # the file the row names, resolved; the label file itself for a row without a path
    split: str  # canonical split ("train", "val", "test"), "all" without a split column, "" when unknown
    label: str
    severity: str  # "error" (left out) or "warning" (kept once)
    problem: str  # one of ROW_PROBLEMS, or "duplicate-row"
    detail: str  # names the label file's line(s)


@dataclass
class LabelTable:
    """What a label file holds: the files of each split by label, and the rows left out."""

    file: str  # the CSV, as given (absolute when the caller made it so)
    found: dict[str, dict[str, list[str]]]  # {split, or "all" without a split column: {label: [paths, sorted]}}
    notes: list[RowNote] = field(default_factory=list)

    @property
    def has_splits(self) -> bool:
        """Whether the file says each row's split (a split column)."""
        return "all" not in self.found


def label_file(data: str | os.PathLike) -> Path | None:
    """The label file `data` names -- a .csv file, or a folder holding labels.csv -- or None for an image folder."""
    path = Path(data)
    if path.is_dir():
        inside = path / LABEL_FILE
        return inside if inside.is_file() else None
    return path if path.suffix.lower() == ".csv" else None


def read_labels(file: str | os.PathLike, split_names: dict[str, str]) -> LabelTable:
    """Read a label file: each row's file (relative paths against the CSV's folder), label and split (a key of
    `split_names`, any case, mapped to its canonical split); rows that cannot be trained on become notes."""
    file = os.fspath(file)
    has_split, rows = _read_rows(file)
    folder = os.path.dirname(file)
    name = os.path.basename(file)
    notes: list[RowNote] = []
    claims: dict[str, list[tuple[int, str, str]]] = {}  # {path: [(line, label, split)]}
    for line, row in rows:
        if not any(row.values()):
            continue  # a blank line or one of bare commas (spreadsheets leave these at the end)
        label, split = row[LABEL], row.get(SPLIT, "all")
        raw = row[PATH]
        path = os.path.normpath(os.path.join(folder, raw)) if raw else file  # join keeps an absolute path as is
        where = f"{name} line {line}"
        if has_split:
            split = split_names.get(split.lower(), "")
            if not split:
                notes.append(RowNote(path, "", label, "error", "unknown-split",
                                     f"{where}: split {row[SPLIT]!r} is not one of {_split_choices(split_names)}"
                                     f"{_closest(row[SPLIT].lower(), split_names)}"))
                continue
        if not raw:
            notes.append(RowNote(path, split, label, "error", "empty-path", f"{where}: no path given"))
        elif not label:
            notes.append(RowNote(path, split, label, "error", "empty-label",
                                 f"{where}: no label; give the file its class, or remove the row"))
        else:
            claims.setdefault(path, []).append((line, label, split))
    found: dict[str, dict[str, list[str]]] = {}
    lines_of = {path: ("lines " if len(said) > 1 else "line ") + ", ".join(str(line) for line, _, _ in said)
                for path, said in claims.items()}  # "line 7", "lines 3, 12"
    for path, said in claims.items():
        lines = lines_of[path]
        meanings = sorted({(label, split) for _, label, split in said})
        if len(meanings) > 1:  # which one is right cannot be known here: the file is left out until the CSV says
            shown = "; ".join(f"{label}" + (f" ({split})" if has_split else "") for label, split in meanings)
            detail = f"{name} {lines} disagree: {shown}; keep the one right row for this file"
            notes += [RowNote(path, split, label, "error", "conflicting-rows", detail) for _, label, split in said]
            continue
        label, split = meanings[0]
        if not os.path.isfile(path):
            why = "a folder, not an image file" if os.path.isdir(path) else "no such file"
            notes.append(RowNote(path, split, label, "error", "missing-file", f"{name} {lines}: {why}"))
            continue
        if len(said) > 1:
            notes.append(RowNote(path, split, label, "warning", "duplicate-row",
                                 f"{name} {lines} are the same row; read once"))
        found.setdefault(split, {}).setdefault(label, []).append(path)
    if has_split and "train" in found:  # a class is what training images teach: other splits' new labels are unknown
        for split in [s for s in found if s != "train"]:
            for label in sorted(set(found[split]) - set(found["train"])):
                notes += [RowNote(path, split, label, "error", "unknown-label",
                                  f"{name} {lines_of[path]}: label {label!r} has no train row, so the network "
                                  "cannot learn it")
                          for path in found[split].pop(label)]
    order = ["all", *dict.fromkeys(split_names.values())]  # all, or train, val, test: as tables show splits
    found = {split: {label: sorted(paths) for label, paths in sorted(per_label.items())}
             for split, per_label in sorted(found.items(), key=lambda kv: order.index(kv[0])) if per_label}
    return LabelTable(file, found, notes)


def _read_rows(file: str) -> tuple[bool, list[tuple[int, dict[str, str]]]]:
    """Whether there is a split column, and (line number, {column: stripped cell}) for each row under the header
    (whose columns are checked)."""
    try:
        # utf-8-sig: Excel and many tools start the file with a byte-order mark, which would stick to "path"
        with open(file, newline="", encoding="utf-8-sig") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise CnnlabError(f"label file {file} does not exist; give a CSV of path,label[,split] or an image "
                          "folder") from None
    except UnicodeDecodeError:
        raise CnnlabError(f"label file {file} is not UTF-8 text; save it as CSV UTF-8") from None
    except OSError as error:
        raise CnnlabError(f"cannot read label file {file}: {error.strerror}") from None
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max(_DELIMITERS, key=first.count)  # the one the header is split by (",": no other used)
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    header = [cell.strip().lower() for cell in next(reader, [])]
    missing = [column for column in (PATH, LABEL) if column not in header]
    if missing:
        raise CnnlabError(f"label file {file} has no {' or '.join(missing)} column (its header: "
                          f"{', '.join(header) or 'none'}); its first line must name the columns path,label and "
                          "optionally split")
    columns = {column: header.index(column) for column in (PATH, LABEL, SPLIT) if column in header}
    rows = []
    for row in reader:
        cells = {column: row[i].strip() if i < len(row) else "" for column, i in columns.items()}
        rows.append((reader.line_num, cells))
    return SPLIT in columns, rows


def _split_choices(split_names: dict[str, str]) -> str:
    canonical = list(dict.fromkeys(split_names.values()))
    synonyms = [name for name in split_names if name not in canonical]
    return ", ".join(canonical) + (f" (or {', '.join(synonyms)})" if synonyms else "")


def _closest(value: str, split_names: dict[str, str]) -> str:
    match = difflib.get_close_matches(value, list(split_names), n=1)
    return f"; did you mean {match[0]!r}?" if match and value else ""
