"""End to end on a tiny built-in dataset: train writes every run-folder file, weights reload to identical
predictions, eval and predict work on the run, errors are clear."""

from __future__ import annotations

import csv
import json

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
from cnnlab.data.transforms import Preprocessing, eval_transform, normalize

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
                             "skipped_steps"]
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
    image = normalize(eval_transform(Preprocessing.for_size(32))(read_image(next((tiny_data / "val" / "circle").iterdir())))[None])
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
    with pytest.raises(CnnlabError, match="too small for model 'simple_cnn'"):
        fit(data=str(tiny_data), img_size=8, epochs=1, out=str(tmp_path / "r"), verbose=False)


def test_run_folder_without_weights(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"model": "simple_cnn", "classes": ["a", "b"], "img_size": 32}))
    with pytest.raises(CnnlabError, match="has no weights"):
        load_model(tmp_path)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(CnnlabError, match="model.json is missing"):
        load_model(tmp_path)
