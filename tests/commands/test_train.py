"""End to end on a tiny built-in dataset: train writes every run-folder file, weights reload to identical
predictions, eval and predict work on the run, errors are clear, relative paths work from anywhere and a moved
data folder is named, and what train prints."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cnnlab.errors import CnnlabError
from cnnlab.commands.evaluate import evaluate
from cnnlab.data.images import read_image
from cnnlab.commands.predict import predict
from cnnlab.runs.reader import load_model, read_metrics
from cnnlab.commands.train import fit
from cnnlab.data.transforms import Preprocessing, normalize
from conftest import cnnlab

RUN_FILES = ["config.yaml", "classes.json", "dataset.json", "metrics.csv", "learning_curves.png",
             "best.safetensors", "last.safetensors", "model.json"]


def test_run_folder_has_every_file(tiny_run):
    run = tiny_run.run_dir
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert json.loads((run / "classes.json").read_text()) == ["circle", "square", "triangle"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["img_size"] == 32 and config["lr"] == pytest.approx(2e-3)
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                             "skipped_steps", "side", "fraction"]
    assert [(r["side"], r["fraction"]) for r in rows] == [("32", "1"), ("32", "1")]  # 2 epochs: no smaller side
    assert read_metrics(run)[1]["val_loss"] == pytest.approx(tiny_run.history[1]["val_loss"], rel=1e-5)
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"] == "simple_cnn" and meta["model_options"]["widths"] == [8, 16]
    assert meta["preprocessing"]["center_crop"] == 32
    assert tiny_run.best_epoch in (1, 2)


def test_weights_are_plain_safetensors_and_reload_to_identical_predictions(tiny_run, tiny_data):
    state = load_file(str(tiny_run.run_dir / "last.safetensors"))
    assert "stages.0.0.weight" in state and state["stages.0.0.weight"].shape == (8, 3, 3, 3)
    reloaded, info = load_model(tiny_run.run_dir, "last")
    trained = tiny_run.model.float().to(memory_format=torch.contiguous_format).eval()
    image = normalize(Preprocessing.for_size(32).eval_transform()(read_image(next((tiny_data / "val" / "circle").iterdir())))[None])
    with torch.no_grad():
        assert torch.equal(reloaded(image), trained(image))
    assert info.classes == ["circle", "square", "triangle"]


def test_evaluate_writes_json_and_confusion_matrix(tiny_run):
    result = evaluate(tiny_run.run_dir, split="val", workers=0, verbose=False)
    assert (tiny_run.run_dir / "eval_val.json").is_file()
    assert (tiny_run.run_dir / "confusion_matrix_val.png").stat().st_size > 1000
    saved = json.loads((tiny_run.run_dir / "eval_val.json").read_text())
    assert saved["images"] == 12 and sum(map(sum, saved["confusion_matrix"])) == 12
    assert saved["accuracy"] == pytest.approx(result.accuracy)
    # best weights evaluate to the val metrics recorded for the best epoch
    best = tiny_run.history[tiny_run.best_epoch - 1]
    assert result.accuracy == pytest.approx(best["val_acc"], abs=1e-6)
    assert result.loss == pytest.approx(best["val_loss"], rel=2e-2)
    assert [row["support"] for row in result.per_class] == [4, 4, 4]


def test_predict_gives_top_k_probabilities(tiny_run, tiny_data):
    rows = predict(tiny_run.run_dir, [tiny_data / "val" / "square"], top_k=2)
    assert len(rows) == 4
    for row in rows:
        assert len(row["top"]) == 2
        assert row["top"][0]["probability"] >= row["top"][1]["probability"]
        assert row["top"][0]["class"] in ("circle", "square", "triangle")
    full = predict(tiny_run.run_dir, [rows[0]["path"]], top_k=3)[0]
    assert sum(t["probability"] for t in full["top"]) == pytest.approx(1.0, abs=1e-4)


def test_image_size_too_small_for_model(tiny_data, tmp_path):
    with pytest.raises(CnnlabError, match="too small for model 'resnet9', which halves the image 5 times; use --img-size 32"):
        fit(data=str(tiny_data), img_size=8, epochs=1, out=str(tmp_path / "r"), verbose=False)


def test_run_folder_without_weights(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"model": "simple_cnn", "classes": ["a", "b"], "img_size": 32}))
    with pytest.raises(CnnlabError, match="has no weights"):
        load_model(tmp_path)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(CnnlabError, match="model.json is missing"):
        load_model(tmp_path)


# --- the end of training and the stored preprocessing (issue 9) -----------------------------------------------------
def test_train_ends_by_evaluating_the_validation_split_of_its_best_epoch(tiny_run):
    """No separate `eval` needed: eval_val.json is the best epoch's own validation pass."""
    saved = json.loads((tiny_run.run_dir / "eval_val.json").read_text())
    best = tiny_run.history[tiny_run.best_epoch - 1]
    assert saved["images"] == 12 and saved["weights"] == "best"
    assert saved["accuracy"] == pytest.approx(best["val_acc"], abs=1e-9)
    assert saved["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert tiny_run.evaluation is not None and tiny_run.evaluation.accuracy == pytest.approx(saved["accuracy"])
    for name in ("confusion_matrix_val.png", "top_losses_val.png", "reliability_val.png", "summary.json"):
        assert (tiny_run.run_dir / name).stat().st_size > 500, name
    report = (tiny_run.run_dir / "report.html").read_text(encoding="utf-8")
    assert "Not evaluated yet" not in report and "missing" not in report.split("Layer table")[0][-200:]


def test_predict_applies_the_stored_preprocessing_not_todays_constants(tiny_run, tiny_data, tmp_path):
    """A run whose model.json records another normalisation and resize is predicted as it records."""
    import shutil

    from cnnlab.runs.inference import open_trained

    run = tmp_path / "older"
    shutil.copytree(tiny_run.run_dir, run)
    meta = json.loads((run / "model.json").read_text())
    meta["preprocessing"] |= {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_short_side": 40}
    (run / "model.json").write_text(json.dumps(meta))
    image = next((tiny_data / "val" / "circle").iterdir())
    rows = predict(run, [image], top_k=3)
    # by hand: resize the short side to 40, center crop 32, normalise with the stored mean/std
    from torchvision.transforms.v2 import functional as F

    pixels = read_image(image, min_size=37)
    crop = F.center_crop(F.resize(pixels, [40], antialias=True), [32])
    x = (crop.float() / 255 - 0.5) / 0.25
    model, _ = load_model(run)
    with torch.no_grad():
        expected = torch.softmax(model(x[None]), 1)[0]
    got = {t["class"]: t["probability"] for t in rows[0]["top"]}
    classes = json.loads((run / "classes.json").read_text())
    assert [got[c] for c in classes] == pytest.approx(expected.tolist(), abs=1e-5)
    assert open_trained(run).pipeline.mean == (0.5, 0.5, 0.5)
    # and the run's own preprocessing gives other probabilities: the stored record is what was applied
    assert predict(tiny_run.run_dir, [image], top_k=3)[0]["top"] != rows[0]["top"]


def test_config_file_gives_the_options_and_flags_override_it(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from cnnlab.cli import app

    out = tmp_path / "again"
    result = CliRunner().invoke(app, ["train", "--config", str(tiny_run.run_dir / "config.yaml"), "--out", str(out),
                                      "--epochs", "1"])
    assert result.exit_code == 0, result.output
    first, again = (yaml.safe_load((d / "config.yaml").read_text()) for d in (tiny_run.run_dir, out))
    assert {k for k in first if first[k] != again[k]} == {"epochs", "out"}
    assert again["epochs"] == 1 and again["model_options"] == {"widths": [8, 16]}
    (tmp_path / "typo.yaml").write_text("img_sise: 32\n")
    bad = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "typo.yaml")])
    assert isinstance(bad.exception, CnnlabError) and "did you mean 'img_size'" in str(bad.exception)


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


@pytest.mark.slow  # two CLI trainings in subprocesses; test_run_folder_has_every_file trains in-process
def test_train_output_and_notes(tiny_data, tmp_path):
    result = cnnlab("train", "--data", tiny_data, "--out", tmp_path / "r", "--epochs", "1", "--batch-size", "64",
                    "--img-size", "32", "--model", "simple_cnn", "--model-option", "widths=[8,16]", "--workers", "0", "--cache", "off")
    assert result.returncode == 0, result.stderr
    assert "--batch-size 64 is larger than the 36 training images" in result.stderr
    text = result.stdout + result.stderr
    assert text.count("Too few validation images to tell") == 1  # the verdict once, not twice
    assert "verdict: too few validation images; report:" in result.stdout
    assert "loss=0.0000" not in result.stderr
