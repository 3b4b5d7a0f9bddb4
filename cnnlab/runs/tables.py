"""Predictions as a table: one row per input, written as CSV, JSON lines or Parquet (`cnnlab predict --out`).

The columns are the same in every format, flat so that a spreadsheet, pandas or a SQL engine reads them as they
are:

    path            the input as predict received it (a folder's images each get their own row)
    error           why it could not be predicted, empty when it was
    unknown         true when the top probability was below the run's threshold (the classes are then the closest
                    ones), false when not, empty for an error row (only when predict applied a threshold: --reject)
    class_1 .. k    the top-k classes, most probable first (empty for an error row)
    probability_1 .. k
    heatmap         the heatmap PNG written for it (only when predict wrote heatmaps)

A file is written whole or not at all (files.atomic_write): an interrupted predict leaves the previous table, or
none, never half of one.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write

TABLE_FORMATS = (".csv", ".jsonl", ".parquet")


def table_columns(rows: list[dict]) -> list[str]:
    """The columns of `rows` (predict's rows): path, error, unknown, class_i/probability_i for the largest top-k,
    heatmap."""
    k = max((len(row.get("top", [])) for row in rows), default=0)
    columns = ["path", "error"] + (["unknown"] if any("unknown" in row for row in rows) else [])
    for i in range(1, k + 1):
        columns += [f"class_{i}", f"probability_{i}"]
    if any("heatmap" in row for row in rows):
        columns.append("heatmap")
    return columns


def table_rows(rows: list[dict]) -> list[dict]:
    """predict's nested rows as flat records with every column (None where a row has no value)."""
    columns = table_columns(rows)
    flat = []
    for row in rows:
        record = dict.fromkeys(columns)
        record["path"], record["error"] = str(row["path"]), row.get("error")
        if "unknown" in record:
            record["unknown"] = row.get("unknown")
        for i, top in enumerate(row.get("top", []), start=1):
            record[f"class_{i}"], record[f"probability_{i}"] = top["class"], top["probability"]
        if "heatmap" in record:
            record["heatmap"] = row.get("heatmap")
        flat.append(record)
    return flat


def table_format(path: str | os.PathLike) -> str:
    """The format of an --out path from its extension; a CnnlabError for any other."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise CnnlabError(f"--out {path}: write a table ending in {', '.join(TABLE_FORMATS)} (the extension says "
                          "which format)")
    return suffix


def write_table(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write predict's `rows` to `path` (.csv, .jsonl or .parquet) whole or not at all; returns the path."""
    path = Path(path)
    suffix = table_format(path)
    records, columns = table_rows(rows), table_columns(rows)
    if not path.parent.is_dir():
        raise CnnlabError(f"--out {path}: the folder {path.parent} does not exist; create it or choose another")
    if suffix == ".csv":
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows({k: "" if v is None else v for k, v in record.items()} for record in records)
    elif suffix == ".jsonl":
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        try:
            import pyarrow
            import pyarrow.parquet
        except ImportError:
            raise CnnlabError(f"--out {path}: writing Parquet needs pyarrow (pip install 'cnnlab[tables]'); or "
                              "write .csv or .jsonl") from None
        types = {name: pyarrow.float64() if name.startswith("probability_") else pyarrow.bool_() if name == "unknown"
                 else pyarrow.string() for name in columns}
        table = pyarrow.table({name: pyarrow.array([record[name] for record in records], type=types[name])
                               for name in columns})

        def write(tmp: str) -> None:
            pyarrow.parquet.write_table(table, tmp)
    atomic_write(path, write)
    return path
