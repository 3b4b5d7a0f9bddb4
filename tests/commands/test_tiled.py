"""Tiled runs end to end on a small objects set: training on tiles at a pixel scale, validation per whole image
by the sliding window, prediction with heatmaps, stitched Grad-CAM, and the errors for what cannot work."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnlab import plots
from cnnlab.cli import app
from cnnlab.commands.explain import explain
from cnnlab.commands.predict import predict
from cnnlab.commands.train import fit
from cnnlab.data.images import image_size
from cnnlab.errors import CnnlabError
from cnnlab.models.gradcam import grad_cam

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


def windows_by_hand(run_dir, path, scale: float, tile: int, stride: int):
    """The sliding window computed here without cnnlab's tiling or inference code: the file decoded at `scale`,
    windows cut by slicing (the last row and column moved inward to end at the edge), the run's weights in
    fp32, the pixels normalised as model.json records. (model, positions, window logits (n, K), pixels,
    normalise: uint8 (N, 3, h, w) -> the model's input)."""
    from cnnlab.data.images import read_image
    from cnnlab.runs.reader import load_model

    model, record = load_model(run_dir)
    pixels = read_image(path, scale=scale)                                                # (3, H, W) uint8

    def starts(length: int) -> list[int]:
        found = list(range(0, length - tile + 1, stride))
        return found if found[-1] == length - tile else found + [length - tile]
    positions = [(top, left) for top in starts(pixels.shape[1]) for left in starts(pixels.shape[2])]
    mean = torch.tensor(record.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(record.preprocessing.std).view(1, 3, 1, 1)

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(normalise(torch.stack([pixels[:, top:top + tile, left:left + tile]
                                              for top, left in positions])))              # (n, K)
    return model, positions, logits, pixels, normalise


def capture_overlays(monkeypatch) -> list[dict]:
    """What predict and explain draw: every call of plots.heatmap_overlay (picture, map, ...), still drawn."""
    calls, draw = [], plots.heatmap_overlay

    def overlay(image, heat, path, **options):
        calls.append({"picture": image, "heat": heat, "path": path, **options})
        return draw(image, heat, path, **options)
    monkeypatch.setattr(plots, "heatmap_overlay", overlay)
    return calls


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


def test_predict_slides_over_the_whole_image_and_writes_a_heatmap(tiled_run, objects, tmp_path, monkeypatch):
    """The image's probabilities are the softmax of the mean of its windows' logits, and the heatmap's every
    cell the mean probability of the windows over it; both against windows cut and run by hand.

    The hand computation is in fp32, as prediction is on every CPU (so that a run, its ONNX file and serve give
    one answer)."""
    image = next((objects / "val" / "cross").iterdir())
    overlays = capture_overlays(monkeypatch)
    rows = predict(tiled_run.run_dir, [image], heatmap=tmp_path / "maps")
    # 512 px at scale 0.5 = 256 px; windows of 48 at overlap 0.5: a stride of 24, starts 0, 24, ..., 192 and 208
    _, positions, logits, pixels, _ = windows_by_hand(tiled_run.run_dir, image, 0.5, 48, 24)
    assert pixels.shape == (3, 256, 256) and len(positions) == 10 * 10 and positions[-1] == (208, 208)
    expected = torch.softmax(logits.mean(0), 0)
    classes = ["cross", "star"]
    got = {t["class"]: t["probability"] for t in rows[0]["top"]}
    assert [got[c] for c in classes] == pytest.approx(expected.tolist(), abs=2e-6)  # rows round to 6 decimals
    assert [t["class"] for t in rows[0]["top"]] == [classes[i] for i in expected.argsort(descending=True)]

    # the heatmap of the predicted class: cells of one stride (24 px; the last row and column 16 px), each the
    # mean of the windows that overlap it
    shown = torch.softmax(logits, 1)[:, int(expected.argmax())]
    cells = -(-256 // 24)
    grid = torch.zeros(cells, cells)
    for row in range(cells):
        for column in range(cells):
            over = [k for k, (top, left) in enumerate(positions) if top < (row + 1) * 24 and top + 48 > row * 24
                    and left < (column + 1) * 24 and left + 48 > column * 24]
            grid[row, column] = shown[over].mean()
    assert len(overlays) == 1 and str(overlays[0]["path"]) == rows[0]["heatmap"]
    # drawn at the picture's size (256 px: not shrunk), each cell's value spread over its pixels (nearest)
    expected_heat = torch.nn.functional.interpolate(grid[None, None], size=(256, 256), mode="nearest")[0, 0]
    assert overlays[0]["heat"].shape == (256, 256)
    torch.testing.assert_close(torch.from_numpy(overlays[0]["heat"]), expected_heat, atol=1e-5, rtol=0)
    assert torch.equal(torch.from_numpy(overlays[0]["picture"]), pixels.permute(1, 2, 0))  # 256 px: not shrunk
    assert grid.max() - grid.min() > 1e-3  # the windows disagree: a map, not one value repeated
    width, height = image_size(rows[0]["heatmap"])
    assert width > 300 and height > 300


def test_explain_stitches_one_map_over_the_whole_image(tiled_run, objects, tmp_path, monkeypatch):
    """The stitched map equals each window's Grad-CAM upsampled to the window, placed where it was cut, averaged
    where windows overlap and divided by its peak once for the whole image; for the predicted class and another."""
    image = next((objects / "val" / "star").iterdir())
    model, positions, logits, pixels, normalise = windows_by_hand(tiled_run.run_dir, image, 0.5, 48, 24)
    probabilities = torch.softmax(logits.mean(0), 0)
    predicted = int(probabilities.argmax())
    classes = ["cross", "star"]
    overlays = capture_overlays(monkeypatch)
    for class_name in (None, classes[1 - predicted]):
        overlays.clear()
        result = explain(tiled_run.run_dir, [image], class_name=class_name, out=tmp_path / "cam")
        target = predicted if class_name is None else classes.index(class_name)
        assert result.rows[0] == {"path": str(image), "class": classes[target], "predicted": classes[predicted],
                                  "probability": pytest.approx(float(probabilities[predicted]), abs=1e-5),
                                  "file": str(tmp_path / "cam" / f"{image.stem}.gradcam.png")}
        total, count = torch.zeros(256, 256), torch.zeros(256, 256)
        for top, left in positions:  # one window at a time
            cam, _ = grad_cam(model, normalise(pixels[None, :, top:top + 48, left:left + 48]), target)                                      # (1, h, w)
            cam = torch.nn.functional.interpolate(cam[:, None], size=(48, 48), mode="bilinear",
                                                  align_corners=False)[0, 0]
            total[top:top + 48, left:left + 48] += cam
            count[top:top + 48, left:left + 48] += 1
        stitched = total / count
        stitched /= stitched.max()
        assert len(overlays) == 1 and overlays[0]["vmax"] is None
        torch.testing.assert_close(torch.from_numpy(overlays[0]["heat"]), stitched, atol=1e-5, rtol=0)
        assert stitched.min() < 0.5  # some windows hold less of the evidence: a map, not a constant
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
    """A whole-image run predicting by windows of its input size (32 px) over the image at scale 1 (64 px): the
    default overlap of half a window gives starts 0, 16, 32 in each direction, and their logits' mean decides."""
    image = next((tiny_data / "val" / "circle").iterdir())
    rows = predict(tiny_run.run_dir, [image], tiled=True, scale=1.0)
    _, positions, logits, pixels, _ = windows_by_hand(tiny_run.run_dir, image, 1.0, 32, 16)
    assert pixels.shape == (3, 64, 64) and len(positions) == 9
    expected = torch.softmax(logits.mean(0), 0)
    classes = ["circle", "square", "triangle"]
    assert [(t["class"], t["probability"]) for t in rows[0]["top"]] == [
        (classes[i], pytest.approx(float(expected[i]), abs=2e-6)) for i in expected.argsort(descending=True)]
    whole = predict(tiny_run.run_dir, [image])  # the run's own way, one 32 px picture of the image: another answer
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(
        sorted(whole[0]["top"], key=lambda t: t["class"]), sorted(rows[0]["top"], key=lambda t: t["class"]))) > 1e-4


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
