"""predict: every input gets its row (its classes or the reason it failed), and the exit code says whether some
or too many inputs could not be predicted (--max-bad)."""

from __future__ import annotations

import json

import pytest

from cnnlab.commands.predict import MIN_INPUTS_FOR_SHARE, check_failures, exit_code, predict
from cnnlab.errors import CnnlabError
from conftest import cnnlab


@pytest.mark.slow
def test_predict_gives_every_input_its_row_and_reason(tiny_run, tiny_data, tmp_path):
    good = next((tiny_data / "val" / "circle").iterdir())
    (tmp_path / "notes.jpg").write_text("not an image at all")
    (tmp_path / "notes.txt").write_text("text")
    inputs = [good, tmp_path / "notes.jpg", tmp_path / "missing.jpg", tmp_path / "notes.txt"]
    rows = predict(tiny_run.run_dir, inputs)
    assert [row["path"] for row in rows] == [str(p) for p in inputs]  # every input, in order
    assert len(rows[0]["top"]) == 3 and "error" not in rows[0]
    assert rows[1]["error"] == "not an image file (unknown format)"
    assert rows[2]["error"] == "no such file or folder"
    assert rows[3]["error"].startswith("not an image file type (suffix '.txt'")
    # a handful of inputs: a share says nothing (1 of 3 is already over 5%), each failure is a row and exit 1
    assert exit_code(rows, 0.05) == 1
    check_failures(rows, 0.05)
    with pytest.raises(CnnlabError, match="3 of 4 inputs could not be predicted, more than --max-bad 0 allows"):
        check_failures(rows, 0.0)  # --max-bad 0: any failure is too many
    # enough inputs for the share to mean something (MIN_INPUTS_FOR_SHARE)
    many = [{"path": f"{i}.jpg", "top": []} for i in range(MIN_INPUTS_FOR_SHARE - 2)]
    assert exit_code(many + [{"path": "x", "error": "e"}] * 2, 0.05) == 2  # 2 of 20 = 10% > 5%
    assert exit_code(many + [{"path": "x", "error": "e"}] + [{"path": "y", "top": []}], 0.05) == 1  # 1 of 20
    assert exit_code(many, 0.05) == 0
    with pytest.raises(CnnlabError, match="2 of 20 inputs could not be predicted, more than --max-bad 0.05"):
        check_failures(many + [{"path": "x", "error": "e"}] * 2, 0.05)

    result = cnnlab("predict", tiny_run.run_dir, *inputs, "--json")
    assert result.returncode == 1  # some inputs failed: not a success
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[1] == {"path": str(inputs[1]), "error": "not an image file (unknown format)"}
    assert "3 of 4 inputs could not be predicted" in result.stderr
    assert (result.stdout + result.stderr).count("notes.jpg") == 1  # its row, and no second warning line
    result = cnnlab("predict", tiny_run.run_dir, *inputs, "--max-bad", "0")
    assert result.returncode == 2 and "error: 3 of 4 inputs could not be predicted" in result.stderr
    assert f"{inputs[1]}: error: not an image file" in result.stdout
    assert cnnlab("predict", tiny_run.run_dir, good).returncode == 0
