"""What a new user ran into (issue 10), each reproduced: lost runs, relative paths, silent predict failures,
official weight files, --freeze, and the CLI's rough edges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.commands.predict import MIN_INPUTS_FOR_SHARE, check_failures, exit_code, predict
from cnnlab.commands.train import fit
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.weights import load_start_weights
from cnnlab.runs.reader import read_metrics

TINY = {"model": "simple_cnn", "img_size": 32, "batch_size": 8, "workers": 0, "model_options": {"widths": [8, 16]}, "cache": "off",
        "verbose": False}
ONE_THREAD = os.environ | {"OMP_NUM_THREADS": "1"}


def cnnlab(*args, cwd=None):
    """The real CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=ONE_THREAD)


# --- 1. a run is never overwritten by accident -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_folder_is_not_overwritten_by_accident(tiny_run, tiny_data, tmp_path):
    run = tmp_path / "run1"
    shutil.copytree(tiny_run.run_dir, run)
    (run / "eval_test.json").write_text("{}")  # an old evaluation the new run must not sit next to
    (run / "notes.txt").write_text("mine")  # the user's own file
    before = (run / "best.safetensors").read_bytes()
    with pytest.raises(CnnlabError, match=r"already holds a run; continue it with `cnnlab train --resume .*run1`, "
                                          r"replace it with --overwrite"):
        fit(data=str(tiny_data), epochs=1, out=str(run), **TINY)
    assert (run / "best.safetensors").read_bytes() == before and (run / "eval_test.json").exists()
    result = cnnlab("train", "--data", tiny_data, "--out", run, "--epochs", "1")
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    fit(data=str(tiny_data), epochs=1, out=str(run), overwrite=True, **TINY)
    assert not (run / "eval_test.json").exists()  # every file of the old run is gone
    assert (run / "notes.txt").read_text() == "mine"  # what is not a run file is left alone
    assert [row["epoch"] for row in read_metrics(run)] == [1]


# --- 2. paths are absolute; a moved data folder is named, and --data points at its new place ----------------------
@pytest.mark.slow
def test_relative_paths_work_from_anywhere_and_a_moved_folder_is_explained(tiny_data, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_data, work / "tiny")
    result = cnnlab("train", "--data", "tiny", "--out", "run", "--epochs", "1", "--img-size", "32",
                    "--model", "simple_cnn", "--model-option", "widths=[8,16]", "--workers", "0", "--cache", "off", cwd=work)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert config["data"] == str(work / "tiny") and config["out"] == str(work / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert cnnlab("eval", work / "run", "--workers", "0", cwd=elsewhere).returncode == 0
    assert cnnlab("train", "--resume", work / "run", "--epochs", "2", cwd=elsewhere).returncode == 0

    (work / "tiny").rename(work / "moved")
    for args in (["eval", work / "run"], ["train", "--resume", work / "run", "--epochs", "3"]):
        failed = cnnlab(*args, cwd=elsewhere)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr
        assert f"{work / 'tiny'}, no longer exists (moved or deleted?); pass --data" in failed.stderr
    assert cnnlab("eval", work / "run", "--data", work / "moved", "--workers", "0", cwd=elsewhere).returncode == 0
    resumed = cnnlab("train", "--resume", work / "run", "--epochs", "3", "--data", work / "moved", cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in read_metrics(work / "run")] == [1, 2, 3]


# --- 4. predict says what failed, for each input, and exits non-zero ------------------------------------------------
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


# --- 7. the CLI's rough edges ----------------------------------------------------------------------------------------
def test_train_output_and_notes(tiny_data, tmp_path):
    result = cnnlab("train", "--data", tiny_data, "--out", tmp_path / "r", "--epochs", "1", "--batch-size", "64",
                    "--img-size", "32", "--model", "simple_cnn", "--model-option", "widths=[8,16]", "--workers", "0", "--cache", "off")
    assert result.returncode == 0, result.stderr
    assert "--batch-size 64 is larger than the 36 training images" in result.stderr
    text = result.stdout + result.stderr
    assert text.count("Too few validation images to tell") == 1  # the verdict once, not twice
    assert "verdict: too few validation images; report:" in result.stdout
    assert "loss=0.0000" not in result.stderr


def test_lr_find_and_augment_preview_write_where_they_say(tiny_data, tmp_path):
    runner = CliRunner()
    os.chdir(tmp_path)
    try:
        result = runner.invoke(app, ["augment-preview", "--data", str(tiny_data), "--img-size", "32", "--n", "2",
                                     "--images", "2"])
        assert result.exit_code == 0, result.output
        written = Path(result.output.strip().removeprefix("wrote "))
        assert written == tmp_path / "runs" / "augment_preview" / "shapes.png" and written.is_file()
        assert not list(tmp_path.glob("*.png"))  # nothing dropped into the current folder
    finally:
        os.chdir(Path(__file__).parent)


def test_cache_list_and_clear(tiny_data, tmp_path):
    from cnnlab.data.cache import open_cache
    from cnnlab.data.folders import find_images

    open_cache(find_images(tiny_data), 37, "disk", cache_dir=str(tmp_path / "cache"), verbose=False)
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(tmp_path / "cache")])
    assert listed.exit_code == 0 and "1 store(s)" in listed.output and "48 images at short side 37" in listed.output
    name = next((tmp_path / "cache").iterdir()).name
    assert name in listed.output
    bad = runner.invoke(app, ["cache", "clear", "nope", "--cache-dir", str(tmp_path / "cache")])
    assert isinstance(bad.exception, CnnlabError) and "no image store named nope" in str(bad.exception)
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path / "cache")])
    assert cleared.exit_code == 0 and "deleted 1 store(s)" in cleared.output
    assert not any((tmp_path / "cache").iterdir())


def test_freeze_trains_only_the_classifier_then_everything(tiny_data, tmp_path):
    from cnnlab.training.setup import build_model, seed_everything
    from cnnlab.config import TrainConfig

    config = TrainConfig(data=str(tiny_data), **{k: v for k, v in TINY.items() if k != "verbose"})
    seed_everything(0)
    start = build_model(config, 3).state_dict()
    probe = fit(data=str(tiny_data), epochs=1, freeze=1, out=str(tmp_path / "probe"), **TINY)
    trained = probe.model.state_dict()
    changed = {name for name in start if not torch.equal(start[name], trained[name])}
    assert changed == {"fc.weight", "fc.bias"}  # a linear probe: the backbone, BN statistics included, untouched
    thawed = fit(data=str(tiny_data), epochs=2, freeze=1, out=str(tmp_path / "thawed"), **TINY)
    assert not torch.equal(thawed.model.state_dict()["stages.0.0.weight"], start["stages.0.0.weight"])


# --- 8. official weight files, and --pretrained offline from torch's hub cache ---------------------------------------
def test_an_official_torchvision_state_dict_loads(tmp_path):
    torch.manual_seed(1)
    official = torchvision.models.resnet18(weights=None).state_dict()  # the names and shapes of resnet18-f37072fd.pth
    torch.save(official, tmp_path / "resnet18-f37072fd.pth")
    model = create_model("resnet18", 3)
    note = load_start_weights(model, str(tmp_path / "resnet18-f37072fd.pth"), "resnet18", 3)
    assert "except the classifier (net.fc.1.weight, net.fc.1.bias)" in note and "trained on 1000 classes" in note
    own = model.state_dict()
    assert torch.equal(own["net.conv1.weight"], official["conv1.weight"])
    assert torch.equal(own["net.layer4.1.bn2.running_var"], official["layer4.1.bn2.running_var"])


def test_pretrained_works_offline_from_the_hub_cache(tmp_path, monkeypatch):
    from cnnlab.models.torchvision_models import official_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = Path(official_weights_file("resnet18"))
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(CnnlabError, match=r"put it at .*resnet18-f37072fd.pth \(or pass --weights FILE\)"):
        create_model("resnet18", 3, pretrained=True)  # no file, no network: a clear line, not a traceback
    torch.manual_seed(2)
    official = torchvision.models.resnet18(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official, path)
    model = create_model("resnet18", 3, pretrained=True)
    assert torch.equal(model.state_dict()["net.layer1.0.conv1.weight"], official["layer1.0.conv1.weight"])
