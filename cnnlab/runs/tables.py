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


def fixed_columns(top_k: int, unknown: bool, heatmap: bool = False) -> list[str]:
    """The columns of a table written in parts (--engine ray): every part has them all, whatever its rows hold,
    so that the parts read back as one table."""
    columns = ["path", "error"] + (["unknown"] if unknown else [])
    for i in range(1, top_k + 1):
        columns += [f"class_{i}", f"probability_{i}"]
    return columns + (["heatmap"] if heatmap else [])


def table_rows(rows: list[dict], columns: list[str] | None = None) -> list[dict]:
    """predict's nested rows as flat records with every column (None where a row has no value); `columns`:
    fixed ones (fixed_columns), else those the rows need (table_columns)."""
    columns = columns or table_columns(rows)
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
        pyarrow = import_pyarrow(path)
        table = arrow_table(records, columns)

        def write(tmp: str) -> None:
            pyarrow.parquet.write_table(table, tmp)
    atomic_write(path, write)
    return path


def import_pyarrow(path: str | os.PathLike):
    """pyarrow with its parquet module, or one line saying how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (pyarrow.parquet is then an attribute)
    except ImportError:
        raise CnnlabError(f"--out {path}: writing Parquet needs pyarrow (pip install 'cnnlab[tables]'); or "
                          "write .csv or .jsonl") from None
    return pyarrow


def column_type(name: str):
    """A column's Arrow type: probabilities float64, unknown bool, size and mtime_ns int64, the rest text."""
    import pyarrow
    if name.startswith("probability_"):
        return pyarrow.float64()
    return {"unknown": pyarrow.bool_(), "size": pyarrow.int64(), "mtime_ns": pyarrow.int64()}.get(name,
                                                                                                pyarrow.string())


def arrow_table(records: list[dict], columns: list[str]):
    """Flat records as a pyarrow.Table with exactly `columns`, each of its column_type (nulls where missing)."""
    import pyarrow
    return pyarrow.table({name: pyarrow.array([record.get(name) for record in records], type=column_type(name))
                          for name in columns})


def nested_rows(records: list[dict]) -> list[dict]:
    """Flat records (a table's rows) back as predict's rows: {"path", "error"} or {"path", "top", ["unknown"]}."""
    rows = []
    for record in records:
        if record.get("error"):
            rows.append({"path": record["path"], "error": record["error"]})
            continue
        top, i = [], 1
        while record.get(f"class_{i}") is not None:
            top.append({"class": record[f"class_{i}"], "probability": record[f"probability_{i}"]})
            i += 1
        row = {"path": record["path"], "top": top}
        if record.get("unknown") is not None:
            row["unknown"] = bool(record["unknown"])
        rows.append(row)
    return rows
