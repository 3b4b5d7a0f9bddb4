"""cnnlab.inspect_run: first-layer filters and per-stage feature maps of a trained run, as PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnlab.errors import CnnlabError
from cnnlab.data.images import read_at, read_image
from cnnlab.commands.inspect import FILTER_PIXELS, filter_images, first_conv, inspect_run
from cnnlab.models import create_model


@pytest.fixture(scope="module")
def an_image(tiny_data):
    return sorted((tiny_data / "val").rglob("*.*"))[0]


def test_files_shapes_and_pictures(tiny_run, an_image, tmp_path, monkeypatch):
    from cnnlab import plots
    from cnnlab.runs.reader import load_model
    from cnnlab.data.transforms import normalize

    shown = {}  # what each stage picture was given, to compare with the stages' real outputs
    real_feature_maps = plots.feature_maps

    def recording(maps, channels, path, title):
        shown[path.name] = (maps, channels, title)
        return real_feature_maps(maps, channels, path, title)

    monkeypatch.setattr(plots, "feature_maps", recording)
    result = inspect_run(tiny_run.run_dir, an_image, tmp_path / "inspect", max_maps=4)

    # tiny_run is simple_cnn with widths [8, 16] at 32 px: two stages, each halving the side
    assert result.stage_names == ["stages.0", "stages.1"]
    assert result.stage_shapes == [(8, 16, 16), (16, 8, 8)]
    assert result.filter_shape == (8, 3, 3, 3)
    assert sorted(p.name for p in result.files) == ["first_layer_filters.png", "input.png", "stage_1.png",
                                                    "stage_2.png"]
    assert sorted(p.name for p in (tmp_path / "inspect").iterdir()) == sorted(p.name for p in result.files)

    # the maps shown are the stage outputs for the preprocessed image, most active channels first
    model, info = load_model(tiny_run.run_dir)
    pre = info.preprocessing
    x = normalize(pre.eval_transform()(read_at(an_image, pre.resolution))[None])  # the one decode path
    with torch.no_grad():
        stage_1 = model.stages[0](x)[0]  # (8, 16, 16)
        stage_2 = model.stages[1](model.stages[0](x))[0]  # (16, 8, 8)
    for name, expected in (("stage_1.png", stage_1), ("stage_2.png", stage_2)):
        maps, channels, title = shown[name]
        assert len(channels) == 4 and maps.shape == (4, *expected.shape[1:])
        assert np.allclose(maps, expected[channels].numpy(), atol=1e-5)
        means = expected.mean(dim=(1, 2))
        assert means[channels[0]] == means.max()
    assert shown["stage_2.png"][2] == "stage 2: 16×8×8 (the 4 most active of 16 channels)"

    seen = read_image(tmp_path / "inspect" / "input.png")
    assert seen.shape == (3, 32, 32) and seen.float().std() > 5
    for name in ("first_layer_filters.png", "stage_1.png", "stage_2.png"):
        picture = read_image(tmp_path / "inspect" / name).float()
        assert picture.std() > 10, name  # not blank
    # 8 filters in one row of 8: a wide strip
    filters_png = read_image(tmp_path / "inspect" / "first_layer_filters.png")
    assert filters_png.shape[2] > 2 * filters_png.shape[1]
    assert "stage 2: stages.1 -> 16x8x8" in result.describe()


def test_filter_images_are_normalised_and_upscaled_with_nearest():
    weight = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    images = filter_images(weight)
    assert len(images) == 2 and images[0].shape == (3 * FILTER_PIXELS, 3 * FILTER_PIXELS, 3)
    assert images[0].min() == 0 and images[0].max() == 1
    kernel = weight[0].numpy()
    expected_top_left = (kernel[:, 0, 0] - kernel.min()) / (kernel.max() - kernel.min())  # (3,) RGB
    block = images[0][:FILTER_PIXELS, :FILTER_PIXELS]
    assert np.allclose(block, expected_top_left)  # one solid block per tap


def test_stages_of_each_family():
    assert [name for name, _ in create_model("resnet18", 3).stage_modules()] == [f"net.layer{i}" for i in range(1, 5)]
    assert len(create_model("mobilenet_v3_small", 3).stage_modules()) == 13
    assert [name for name, _ in create_model("simple_cnn", 3, widths=[4, 8, 16]).stage_modules()] == \
        ["stages.0", "stages.1", "stages.2"]
    assert create_model("mlp", 3, img_size=16).stage_modules() == []


def test_models_without_convolutions_are_refused():
    with pytest.raises(CnnlabError, match="no Conv2d"):
        first_conv(create_model("mlp", 3, img_size=16, hidden=8))


def test_cli_inspect(tiny_run, an_image, tmp_path):
    from cnnlab.cli import app

    result = CliRunner().invoke(app, ["inspect", str(tiny_run.run_dir), str(an_image), "--out", str(tmp_path),
                                      "--max-maps", "2"])
    assert result.exit_code == 0, result.output
    assert "stage 1: stages.0 -> 8x16x16" in result.output
    assert (tmp_path / "stage_2.png").exists() and not (tmp_path / "stage_3.png").exists()
