"""Tiled runs end to end on a small objects set: training on tiles at a pixel scale, validation per whole image
by the sliding window, prediction with heatmaps, stitched Grad-CAM, and the errors for what cannot work."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.commands.explain import explain
from cnnlab.commands.predict import predict
from cnnlab.commands.train import fit
from cnnlab.data.images import image_size
from cnnlab.errors import CnnlabError

TILED = {"model": "simple_cnn", "model_options": {"widths": [8, 16, 32]}, "tile": 48, "scale": 0.5,
         "batch_size": 8, "workers": 0, "cache": "off", "verbose": False}


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """2 classes x 8 images of 512 px with small shapes (8 px at 512 / 64)."""
    from cnnlab.data.synth import synthesize

    root = tmp_path_factory.mktemp("objects") / "objects"
    synthesize(root, classes=2, per_class=8, size=512, seed=0, val_fraction=0.25, kind="objects")
    return root


@pytest.fixture(scope="module")
def tiled_run(objects, tmp_path_factory):
    return fit(data=str(objects), epochs=2, out=str(tmp_path_factory.mktemp("tiled") / "run"), **TILED)


def test_the_run_records_tiles_and_validates_whole_images(tiled_run):
    run = tiled_run.run_dir
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocessing"]["tile"] == 48 and meta["preprocessing"]["scale"] == 0.5
    assert meta["img_size"] == 48
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["tile"] == 48 and config["img_size"] == 48
    evaluation = json.loads((run / "eval_val.json").read_text())
    assert evaluation["images"] == 4  # 2 val images per class, scored per image, not per tile
    assert "top_losses_gradcam" in evaluation["files"] and (run / evaluation["files"]["top_losses_gradcam"]).is_file()


def test_predict_slides_over_the_whole_image_and_writes_a_heatmap(tiled_run, objects, tmp_path):
    image = next((objects / "val" / "cross").iterdir())
    rows = predict(tiled_run.run_dir, [image], heatmap=tmp_path / "maps")
    assert len(rows[0]["top"]) == 2 and sum(t["probability"] for t in rows[0]["top"]) == pytest.approx(1, abs=1e-4)
    width, height = image_size(rows[0]["heatmap"])
    assert width > 300 and height > 300
    # the same image predicted by hand: 256 px at scale 0.5, windows of 48 at overlap 0.5, mean of the logits
    from cnnlab.data.tiles import cut_tiles, tile_positions
    from cnnlab.runs.inference import open_trained

    trained = open_trained(tiled_run.run_dir)
    pixels = trained.dataset([__import__("cnnlab").data.folders.Sample(str(image), 0)]).load(0)
    assert pixels.shape == (3, 256, 256)
    positions = tile_positions(256, 256, 48, 0.5)
    with torch.no_grad():
        logits = trained.model(trained.pipeline(cut_tiles(pixels, positions, 48))).mean(0)
    expected = torch.softmax(logits, 0)
    got = {t["class"]: t["probability"] for t in rows[0]["top"]}
    assert [got[c] for c in trained.record.classes] == pytest.approx(expected.tolist(), abs=1e-4)


def test_explain_stitches_one_map_over_the_whole_image(tiled_run, objects, tmp_path):
    image = next((objects / "val" / "star").iterdir())
    result = explain(tiled_run.run_dir, [image], out=tmp_path / "cam")
    assert result.rows[0]["file"] == str(tmp_path / "cam" / f"{image.stem}.gradcam.png")
    assert image_size(result.files[0])[0] > 300
    with pytest.raises(CnnlabError, match="--class 'dog' is not one of the run's classes: cross, star"):
        explain(tiled_run.run_dir, [image], class_name="dog")


def test_tiles_that_do_not_fit_are_one_clear_line(objects, tmp_path):
    with pytest.raises(CnnlabError, match=r"is 64x64 px at scale 0.125, smaller than one 96 px tile; use a smaller "
                                          r"--tile, a larger --scale"):
        fit(data=str(objects), epochs=1, out=str(tmp_path / "r"), **(TILED | {"tile": 96, "scale": 0.125}))
    result = CliRunner().invoke(app, ["train", "--data", str(objects), "--tile", "96", "--scale", "0.125",
                                      "--out", str(tmp_path / "r2")])
    assert isinstance(result.exception, CnnlabError)


def test_any_run_can_predict_tiled(tiny_run, tiny_data):
    image = next((tiny_data / "val" / "circle").iterdir())  # 64 px; the run's input is 32 px
    rows = predict(tiny_run.run_dir, [image], tiled=True, scale=1.0)
    assert len(rows[0]["top"]) == 3


def test_an_epoch_covers_every_image_once(objects, tmp_path):
    from cnnlab.config import TrainConfig
    from cnnlab.data.loaders import samples_per_epoch
    from cnnlab.training.setup import prepare

    options = {k: v for k, v in TILED.items() if k != "verbose"}
    run = prepare(TrainConfig(data=str(objects), epochs=1, out=str(tmp_path / "run"), **options), verbose=False)
    # 12 training images of 512 px at scale 0.5: 256 x 256 px, the area of round(65,536 / 48^2) = 28 tiles each
    assert len(run.splits.splits["train"]) == 12
    assert samples_per_epoch(run.train_loader) == 12 * 28
    assert len(run.train_loader) == 12 * 28 // 8


def test_tiled_runs_default_to_whole_tiles_and_max_and_average_pooling(objects, tmp_path):
    """A tiled run trains on whole tiles (progressive resizing would crop them to a quarter, which often holds none
    of what labels the image) and resnet9 pools with avgmax; both are only defaults, and whole-image runs keep
    theirs. The pooling is recorded in model.json, so inference rebuilds the same network."""
    from cnnlab.config import TrainConfig
    from cnnlab.training.setup import model_options

    assert TrainConfig(data="x", tile=64).progressive is False and TrainConfig(data="x").progressive is True
    assert TrainConfig(data="x", tile=64, progressive=True).progressive is True
    assert model_options(TrainConfig(data="x", tile=64))["pool"] == "avgmax"
    assert "pool" not in model_options(TrainConfig(data="x"))
    assert model_options(TrainConfig(data="x", tile=64, model_options={"pool": "avg"}))["pool"] == "avg"
    assert "pool" not in model_options(TrainConfig(data="x", tile=64, model="simple_cnn"))

    result = fit(data=str(objects), epochs=1, out=str(tmp_path / "run"), **TILED | {
        "model": "resnet9", "model_options": {"widths": [8, 8, 16, 16]}})
    meta = json.loads((result.run_dir / "model.json").read_text())
    assert meta["model_options"]["pool"] == "avgmax"
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["progressive"] is False
    from cnnlab.runs.inference import open_trained
    assert open_trained(result.run_dir).model.pool == "avgmax"
