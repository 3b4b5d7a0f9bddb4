"""MLP vs CNN on tiny data: one run per model with identical settings, a table with the true parameter
counts, compare.md/.json/.png written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.commands.compare import COLUMNS, compare
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.runs.reader import read_metrics


@pytest.fixture(scope="module")
def tiny_compare(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return compare(str(tiny_data), ("mlp", "simple_cnn"), epochs=1, img_size=32, batch_size=8, out=out,
                   per_model_options={"simple_cnn": {"widths": [8, 16]}}, workers=0, cache="off", augment="none",
                   verbose=False)


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_table_has_both_models_with_true_parameter_counts(tiny_compare):
    rows = {row["model"]: row for row in tiny_compare.rows}
    assert list(rows) == ["mlp", "simple_cnn"]
    mlp = _parameters(create_model("mlp", 3, img_size=32))
    assert rows["mlp"]["parameters"] == mlp == 3 * 32 * 32 * 512 + 512 + 512 * 3 + 3
    assert rows["simple_cnn"]["parameters"] == _parameters(create_model("simple_cnn", 3, widths=[8, 16]))
    for name, row in rows.items():
        assert set(COLUMNS) <= set(row)
        # the row's accuracy is the run's own best epoch, as metrics.csv recorded it
        recorded = read_metrics(tiny_compare.runs[name])
        assert row["best_epoch"] == 1 and row["best_val_acc"] == pytest.approx(recorded[0]["val_acc"], abs=1e-6)
        assert row["train_seconds"] == pytest.approx(recorded[0]["seconds"], rel=1e-4)
        # one epoch: the row says what the run's own report says, in the same words
        written = json.loads((tiny_compare.runs[name] / "diagnosis.json").read_text())
        assert written["verdict"] == "too_few_val"  # 12 validation images: too few to tell anything
        assert row["verdict"] == "too few validation images"


def test_each_model_has_its_own_run_with_the_same_settings(tiny_compare):
    import yaml

    configs = {}
    for name, run_dir in tiny_compare.runs.items():
        assert run_dir == tiny_compare.out_dir / name and (run_dir / "best.safetensors").is_file()
        configs[name] = yaml.safe_load((run_dir / "config.yaml").read_text())
    different = {key for key in configs["mlp"] if configs["mlp"][key] != configs["simple_cnn"][key]}
    assert different == {"model", "model_options", "out"}


def test_files_written(tiny_compare):
    out = tiny_compare.out_dir
    saved = json.loads((out / "compare.json").read_text())
    assert [row["model"] for row in saved["rows"]] == ["mlp", "simple_cnn"]
    assert saved["settings"]["epochs"] == 1 and saved["settings"]["img_size"] == 32
    table = (out / "compare.md").read_text()
    assert "| mlp | 1,574,915 (1.57 M)" in table and "| simple_cnn |" in table
    assert (out / "compare.png").stat().st_size > 5000
    assert tiny_compare.describe().count("\n") == 3  # header, rule, two rows


def test_bad_model_lists_fail_before_training(tiny_data, tmp_path):
    with pytest.raises(CnnlabError, match="did you mean 'simple_cnn'"):
        compare(str(tiny_data), ("mlp", "simple_cn"), out=tmp_path)
    with pytest.raises(CnnlabError, match="two or more different models"):
        compare(str(tiny_data), ("mlp", "mlp"), out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_compare_into_the_same_folder_needs_overwrite(tiny_compare, tiny_data):
    with pytest.raises(CnnlabError, match="already holds a run"):
        compare(str(tiny_data), ("mlp", "simple_cnn"), epochs=1, img_size=32, out=tiny_compare.out_dir,
                verbose=False)
