"""Augmentation preview: the panels are the training transform's own output (random per read, identical with
augment='none'), reproducible by seed, laid out as rows x (1 + n) in the PNG,
and written where the command says (runs/augment_preview/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.commands.augment_preview import augment_preview
from cnnlab.runs.preview import pick_images, preview_tensors, write_run_preview
from cnnlab.cli import app
from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.data.images import image_size


def test_augmented_reads_differ_from_each_other_and_from_the_original(tiny_data):
    batch, names = preview_tensors(TrainConfig(data=str(tiny_data), img_size=32), n=4, images=3)
    assert batch.shape == (3, 5, 3, 32, 32) and batch.dtype == torch.float32
    assert names == ["circle", "square", "triangle"]  # one image per class, round robin
    for row in batch:
        for a in range(5):
            for b in range(a + 1, 5):
                assert not torch.equal(row[a], row[b]), (a, b)


def test_augment_none_gives_identical_panels(tiny_data):
    batch, _ = preview_tensors(TrainConfig(data=str(tiny_data), img_size=32, augment="none"), n=3, images=2)
    for row in batch:
        assert all(torch.equal(row[0], panel) for panel in row[1:])


def test_same_seed_same_panels_other_seed_other_panels(tiny_data):
    config = TrainConfig(data=str(tiny_data), img_size=32, seed=3)
    first, _ = preview_tensors(config, n=2, images=2)
    again, _ = preview_tensors(config, n=2, images=2)
    other, _ = preview_tensors(TrainConfig(data=str(tiny_data), img_size=32, seed=4), n=2, images=2)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_pick_images_cycles_through_classes():
    labels = [0] * 5 + [1] * 2 + [2] * 1
    chosen = pick_images(labels, 6, seed=0)
    assert [labels[i] for i in chosen] == [0, 1, 2, 0, 1, 0] and len(set(chosen)) == 6
    assert len(pick_images(labels, 20, seed=0)) == 8  # never more than there are images


def test_png_layout_follows_rows_and_columns(tiny_data, tmp_path):
    narrow = augment_preview(str(tiny_data), n=3, images=2, img_size=32, out=tmp_path / "narrow.png")
    wide = augment_preview(str(tiny_data), n=7, images=2, img_size=32, out=tmp_path / "wide.png")
    tall = augment_preview(str(tiny_data), n=3, images=4, img_size=32, out=tmp_path / "tall.png")
    (w_narrow, h_narrow), (w_wide, h_wide), (w_tall, h_tall) = map(image_size, (narrow, wide, tall))
    # twice the columns: about twice as wide (labels and margins are shared), same height
    assert 1.7 < w_wide / w_narrow < 2.1 and abs(h_wide - h_narrow) <= 0.03 * h_narrow
    # twice the rows: taller by about the grid's height, same width
    assert 1.5 < h_tall / h_narrow < 2.1 and abs(w_tall - w_narrow) <= 0.03 * w_narrow  # row labels differ
    assert 0.7 * 4 / 2 < w_narrow / h_narrow < 1.3 * 4 / 2  # 4 columns x 2 rows


def test_write_run_preview_and_cli_run_option(tiny_data, tmp_path):
    config = TrainConfig(data=str(tiny_data), img_size=32)
    assert write_run_preview(tmp_path / "run", config) == tmp_path / "run" / "augment_preview.png"
    assert write_run_preview(tmp_path / "run2", TrainConfig(data=str(tmp_path / "missing"))) is None  # warns only
    result = CliRunner().invoke(app, ["augment-preview", "--data", str(tiny_data), "--img-size", "32", "--n", "2",
                                      "--images", "2", "--run", str(tmp_path / "cli-run")])
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "cli-run" / "augment_preview.png")[0] > 200
    assert "--augment" in CliRunner().invoke(app, ["augment-preview", "--help"]).output


def test_bad_arguments_are_user_errors(tiny_data):
    with pytest.raises(CnnlabError, match="n >= 1"):
        preview_tensors(TrainConfig(data=str(tiny_data), img_size=32), n=0)
    with pytest.raises(CnnlabError, match="augment"):
        augment_preview(str(tiny_data), augment="strong")


def test_a_cache_that_training_built_is_read(tiny_data, tmp_path):
    """After a run has cached every split, the preview reads the training images from that cache (it once asked
    the cache for the validation files too, which it had not opened it with)."""
    from cnnlab.data.folders import find_samples
    from cnnlab.training.setup import open_training_cache

    config = TrainConfig(data=str(tiny_data), img_size=32, cache="disk", cache_dir=str(tmp_path / "cache"))
    built = open_training_cache(find_samples(config.data, val_fraction=config.val_fraction, seed=config.seed),
                                config, verbose=False)
    assert built is not None and len(built) == 48  # train and val of tiny_data
    batch, _ = preview_tensors(config, n=2, images=2)
    assert batch.shape == (2, 3, 3, 32, 32)


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
