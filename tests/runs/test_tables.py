"""predict --out: the rows as a CSV, JSON-lines or Parquet table, read back and compared with predict's own rows."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet
import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.commands.predict import predict
from cnnlab.errors import CnnlabError
from cnnlab.runs.reject import read_threshold
from cnnlab.runs.tables import table_columns, table_rows, write_table


@pytest.fixture
def inputs(tiny_data, tmp_path):
    """Two real validation images and a text file posing as an image (an error row between them)."""
    images = sorted((tiny_data / "val" / "circle").iterdir())[:2]
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    return [images[0], fake, images[1]]


def test_every_format_holds_predicts_rows(tiny_run, inputs, tmp_path):
    assert read_threshold(tiny_run.run_dir) is not None
    rows = predict(tiny_run.run_dir, inputs, top_k=2, workers=0, out=tmp_path / "p.csv")
    assert [("error" in row) for row in rows] == [False, True, False]
    # tiny_run chose a threshold (reject.json), so every predicted row says whether it is unknown
    assert [type(row.get("unknown")) for row in rows] == [bool, type(None), bool]
    expected = [{"path": str(row["path"]), "error": row.get("error"), "unknown": row.get("unknown"),
                 "class_1": row["top"][0]["class"] if "top" in row else None,
                 "probability_1": row["top"][0]["probability"] if "top" in row else None,
                 "class_2": row["top"][1]["class"] if "top" in row else None,
                 "probability_2": row["top"][1]["probability"] if "top" in row else None} for row in rows]
    assert table_rows(rows) == expected

    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["path", "error", "unknown", "class_1", "probability_1", "class_2", "probability_2"]
    assert [{k: (None if v == "" else float(v) if k.startswith("probability") else v == "True" if k == "unknown"
             else v) for k, v in r.items()}
            for r in read] == expected

    write_table(rows, tmp_path / "p.jsonl")
    lines = (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected

    write_table(rows, tmp_path / "p.parquet")
    table = pyarrow.parquet.read_table(tmp_path / "p.parquet")
    assert table.column_names == list(expected[0]) and table.to_pylist() == expected
    assert str(table.schema.field("probability_1").type) == "double"
    # the two probabilities of a predicted row are its top two, most probable first
    assert expected[0]["probability_1"] >= expected[0]["probability_2"] > 0


def test_heatmap_paths_get_a_column_only_when_written():
    rows = [{"path": "a.jpg", "top": [{"class": "x", "probability": 0.9}], "heatmap": "maps/a.heatmap.png"},
            {"path": "b.jpg", "error": "not an image"}]
    assert table_columns(rows) == ["path", "error", "class_1", "probability_1", "heatmap"]
    assert table_rows(rows)[1] == {"path": "b.jpg", "error": "not an image", "class_1": None, "probability_1": None,
                                   "heatmap": None}
    assert "heatmap" not in table_columns(rows[1:])


def test_a_wrong_extension_or_folder_is_refused_before_predicting(tiny_run, inputs, tmp_path):
    with pytest.raises(CnnlabError, match=r"--out .*p\.xlsx: write a table ending in \.csv, \.jsonl, \.parquet"):
        predict(tiny_run.run_dir, inputs, out=tmp_path / "p.xlsx")
    with pytest.raises(CnnlabError, match="the folder .*missing does not exist"):
        write_table([{"path": "a.jpg", "error": "x"}], tmp_path / "missing" / "p.csv")
    assert not (tmp_path / "missing").exists()


def test_cli_writes_the_table_and_keeps_its_exit_code(tiny_run, inputs, tmp_path):
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(app, ["predict", str(tiny_run.run_dir), *map(str, inputs), "--out", str(out),
                                      "--workers", "0"])
    assert result.exit_code == 1, result.output  # one of three inputs failed: each row says why
    with open(out, newline="", encoding="utf-8") as handle:
        read = list(csv.DictReader(handle))
    assert [r["path"] for r in read] == [str(p) for p in inputs]
    assert read[1]["error"] and not read[0]["error"] and read[0]["class_1"] in ("circle", "square", "triangle")
