"""prepare() in stages: a run that fails before its first checkpoint leaves no run folder behind (nor its files in a
folder of the user's), a stopped run with a checkpoint is kept, Ctrl-C while the cache is built is one line;
the defaults of a tiled run (whole tiles, avgmax pooling) and class balance (loss weights when the classes are skewed)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from cnnlab.cli import main
from cnnlab.commands.train import fit
from cnnlab.errors import CnnlabError
from cnnlab.training import loop, setup
from cnnlab.training.setup import class_weights, resolve_balance
from conftest import TILED

TINY = dict(img_size=32, epochs=1, batch_size=8, workers=0, model="simple_cnn", model_options={"widths": [8, 16]},
            cache="off", verbose=False)


def test_a_run_failing_in_its_data_stage_makes_no_folder(tiny_data, tmp_path):
    out = tmp_path / "runs" / "too-big-tiles"
    with pytest.raises(CnnlabError, match="smaller than one 128 px tile"):
        fit(data=str(tiny_data), out=str(out), **(TINY | {"img_size": 128}), tile=128)
    assert not out.exists()


def test_a_run_failing_after_its_folder_was_made_removes_it(tiny_data, tmp_path):
    out = tmp_path / "short"
    with pytest.raises(CnnlabError, match="--time 1s is too short"):
        fit(data=str(tiny_data), out=str(out), time="1s", **TINY)
    assert not out.exists()
    assert fit(data=str(tiny_data), out=str(out), **TINY).run_dir == out  # the same --out works at once


def test_a_folder_of_the_users_is_kept_with_its_files(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def failing(run, epoch, stop=None):
        raise CnnlabError("the first epoch failed")

    monkeypatch.setattr(loop, "train_one_epoch", failing)
    with pytest.raises(CnnlabError, match="the first epoch failed"):
        fit(data=str(tiny_data), out=str(out), **TINY)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # config.yaml, model.json... are gone


def test_a_run_with_a_checkpoint_is_kept(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "two-epochs"
    real = loop._train_epoch

    def second_fails(run, epoch, stop):
        if epoch == 2:
            raise CnnlabError("the second epoch failed")
        real(run, epoch, stop)

    monkeypatch.setattr(loop, "_train_epoch", second_fails)
    with pytest.raises(CnnlabError, match="the second epoch failed"):
        fit(data=str(tiny_data), out=str(out), **(TINY | {"epochs": 2}))
    assert (out / "checkpoint.safetensors").exists() and (out / "best.safetensors").exists()


def test_ctrl_c_while_the_cache_is_built_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # a generator, as decode_all is

    from cnnlab.data import cache as cache_module

    monkeypatch.setattr(cache_module, "decode_all", interrupted)
    out = tmp_path / "interrupted"
    monkeypatch.setattr(sys, "argv", ["cnnlab", "train", "--data", str(tiny_data), "--img-size", "32", "--workers", "0",
                                      "--cache", "disk", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == "SIGINT: stopped (Ctrl-C)"
    assert "Traceback" not in captured.err and not out.exists()


def test_the_stages_are_what_prepare_runs(tiny_data):
    """lr-find, plan and augment-preview build from the same stages: the datasets of one config are equal."""
    from cnnlab.config import TrainConfig

    config = TrainConfig(data=str(tiny_data), img_size=32, cache="off", workers=0)
    env = setup.environment(config, join=False)
    assert env.world.world_size == 1 and env.workers == 0
    splits = setup.find_splits(config)
    data = setup.prepare_data(config, splits, verbose=False)
    assert data.train_draws == len(splits.splits["train"]) == 36 and data.train_counts == [12, 12, 12]
    loaders = setup.make_loaders(config, data, env, setup.resolve_balance("auto", data.train_counts))
    assert len(loaders["train"]) == 36 // config.batch_size + (36 % config.batch_size > 0)
    assert loaders["val"].dataset is data.datasets["val"]


def test_train_warns_in_one_line_about_files_data_check_calls_out_of_place(tiny_data, tmp_path, capsys):
    """A placeholder GIF among a class's JPEGs: data check flags it, and train says so once instead of training on it
    silently."""
    import shutil

    import numpy as np

    from cnnlab.data.check import check_dataset
    from cnnlab.data.images import save_image

    data = tmp_path / "photos"
    for split in ("train", "val"):
        shutil.copytree(tiny_data / split, data / split)
    for path in sorted((data / "train").rglob("*.jpg")):  # 24 JPEGs per class: one GIF is then under 5% of it
        shutil.copy(path, path.with_name(f"copy_{path.name}"))
    placeholder = data / "train" / "circle" / "placeholder.gif"
    save_image(np.full((16, 16, 3), 200, dtype=np.uint8), placeholder)
    assert str(placeholder) in {p.path for p in check_dataset(data, workers=1).problems if p.problem == "format-outlier"}

    fit(data=str(data), out=str(tmp_path / "run"), **(TINY | {"verbose": True, "cache": "disk"}),
        cache_dir=str(tmp_path / "cache"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "out of place" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: 1 file looks out of place (e.g. ") and "placeholder.gif: GIF among 24 JPEG" \
        in lines[0] and lines[0].endswith(f"`cnnlab data check {data}` lists them")


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


def test_balance_auto_weights_the_loss_only_when_the_classes_are_skewed():
    skewed = resolve_balance("auto", [300, 100, 50])
    assert skewed.mode == "weights" and skewed.ratio == 6.0 and "6.0x" in skewed.note
    assert resolve_balance("auto", [120, 100, 50]).mode == "off"  # 2.4x: under the 3x threshold
    assert resolve_balance("sampler", [10, 10]).mode == "sampler"
    weights = class_weights([300, 100, 50])
    assert weights.tolist() == pytest.approx([450 / 900, 450 / 300, 450 / 150])
    # weighted by the counts they average to 1 per image: the loss keeps its scale
    assert (weights * torch.tensor([300.0, 100, 50])).sum().item() == pytest.approx(450)
