"""The LR range test: exponential schedule recorded, divergence stop, suggestion rule, exact restore,
and `fit(lr="auto")` / `cnnlab lr-find` end to end on tiny data."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnlab.training import lr_find as lr_find_module
from cnnlab.cli import app
from cnnlab.config import TrainConfig
from cnnlab.data.folders import find_samples
from cnnlab.training.device import resolve_precision
from cnnlab.errors import CnnlabError
from cnnlab.data.images import image_size
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample
from cnnlab.data.loaders import make_loader, skip_sampler
from cnnlab.data.transforms import Preprocessing
from cnnlab.training.forward import InputPipeline
from cnnlab.commands.lr_find import find_lr
from cnnlab.training.lr_find import LRFindResult, lr_find, planned_steps, suggest_lr
from cnnlab.commands.train import fit
from cnnlab.training.setup import build_model, make_datasets, seed_everything

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)
PIPE = InputPipeline(CPU, FP32)


@pytest.fixture()
def model_and_loader(tiny_data):
    """simple_cnn (8, 16) at 32 px and the training loader of tiny_data (36 images, batches of 8); no
    augmentation: the random transforms would cost more than the steps."""
    config = TrainConfig(data=str(tiny_data), img_size=32, batch_size=8, augment="none",
                         model="simple_cnn", model_options={"widths": [8, 16]})
    splits = find_samples(config.data)
    seed_everything(0)
    model = build_model(config, len(splits.classes))
    loader = make_loader(make_datasets(splits, config)["train"], 8, workers=0, train=True, seed=0)
    return model, loader


def test_schedule_is_exponential_and_curve_is_recorded(model_and_loader):
    model, loader = model_and_loader
    result = lr_find(model, loader, "adamw", PIPE, start_lr=1e-6, end_lr=1.0, num_steps=15,
                     diverge_factor=1e9)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == 15  # loader cycled (5 batches/pass)
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs[-1] == pytest.approx(1.0)
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, math.log(1e6) / 14)
    # the bias-corrected average starts at the first loss, and every value is finite
    assert result.smoothed[0] == pytest.approx(result.losses[0])
    assert all(math.isfinite(v) for v in result.losses + result.smoothed)
    assert 1e-6 <= result.suggestion <= 1.0 and not result.diverged


def test_weights_buffers_modes_grads_and_rng_are_restored_exactly(model_and_loader):
    model, loader = model_and_loader
    model.eval()  # a mode the test must put back
    before = {key: value.clone() for key, value in model.state_dict().items()}
    skip_sampler(loader).set_epoch(7)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(123), np.random.seed(123)

    lr_find(model, loader, "sgd", PIPE, start_lr=1e-3, end_lr=1.0, num_steps=12, diverge_factor=1e9)

    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (expected[0].tolist(), *expected[1:])
    after = model.state_dict()
    assert list(after) == list(before)
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed == []  # every parameter and buffer (BN running stats, num_batches_tracked) bit-identical
    assert "stages.0.1.running_mean" in before and before["stages.0.1.num_batches_tracked"].item() == 0
    assert not any(module.training for module in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert skip_sampler(loader).epoch == 7


def test_huge_end_lr_stops_at_divergence(model_and_loader):
    model, loader = model_and_loader
    result = lr_find(model, loader, "sgd", PIPE, start_lr=1e-2, end_lr=1e8, num_steps=60)
    assert result.diverged and len(result.lrs) < 60
    last = result.smoothed[-1]
    assert math.isnan(last) or last > 4 * min(v for v in result.smoothed if math.isfinite(v))
    # the suggestion lies in the tested range and below where the loss blew up
    assert result.lrs[0] <= result.suggestion < result.lrs[-1]
    assert "diverged" in result.describe()


def _curve(n: int = 120) -> tuple[list[float], list[float]]:
    """A textbook range-test curve: flat at 2.3 up to 1e-4, falling to 0.4 at 1e-1, exploding after."""
    lrs = list(np.geomspace(1e-7, 10, n))
    loss = [2.3 if lr < 1e-4 else 2.3 - 1.9 * (math.log10(lr) + 4) / 3 if lr < 1e-1
            else 0.4 + 30 * (math.log10(lr) + 1) ** 2 for lr in lrs]
    return lrs, loss


def test_suggestion_is_halfway_along_the_fall_of_a_textbook_curve():
    lrs, loss = _curve()
    suggestion, reason = suggest_lr(lrs, loss)
    # the fall spans 1e-4 .. 1e-1, so halfway in log lr is ~3e-3 (one grid step either side)
    assert 1.5e-3 < suggestion < 6e-3
    assert "longest fall" in reason


def test_suggestion_ignores_a_trailing_nan():
    lrs, loss = _curve()
    with_nan = suggest_lr(lrs[:100] + [lrs[100]], loss[:100] + [float("nan")])
    assert with_nan[0] == pytest.approx(suggest_lr(lrs[:100], loss[:100])[0])


def test_flat_curve_falls_back_to_the_default_below_the_climb():
    # a task that does not start learning within the test: flat at ln(6) with wobble, blowing up from 1e-1
    lrs = list(np.geomspace(1e-7, 10, 150))
    wobble = 0.01 * np.sin(np.arange(150))
    loss = [1.79 + w + (0 if lr < 1e-1 else 3 * math.log10(lr / 1e-1)) for lr, w in zip(lrs, wobble)]
    suggestion, reason = suggest_lr(lrs, loss, fallback=2e-3)
    assert suggestion == 2e-3 and "did not fall" in reason and "default" in reason
    # a default above a tenth of the blow-up is capped there (the climb passes 10% one grid step after 1e-1)
    suggestion, reason = suggest_lr(lrs, loss, fallback=0.05)
    assert 1e-2 <= suggestion < 1.5e-2 and "a tenth of the lr where the loss climbs" in reason
    # a loss that only rises: the cap lies below the range, so the start of the range is returned
    suggestion, _ = suggest_lr(lrs[:40], [1.0 + i for i in range(40)])
    assert suggestion == pytest.approx(lrs[0])


def test_planned_steps_cycles_short_loaders_but_not_forever():
    assert planned_steps(200, 5) == 100  # 5 batches per pass: at most 10 passes, but at least 100 steps
    assert planned_steps(200, 15) == 150
    assert planned_steps(200, 1000) == 200
    assert planned_steps(30, 5) == 30


def test_find_lr_writes_the_plot(tiny_data, tmp_path):
    out = tmp_path / "lr.png"
    result, path = find_lr(str(tiny_data), img_size=32, batch_size=8, steps=20, out=out, workers=0, cache="off",
                           augment="none", model="simple_cnn", model_options={"widths": [8, 16]}, verbose=False)
    assert isinstance(result, LRFindResult) and len(result.lrs) == 20 and path == out
    width, height = image_size(out)
    assert width > 300 and height > 200


@pytest.mark.slow
def test_fit_with_lr_auto_records_the_suggestion(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(lr_find_module, "MIN_STEPS", 10)  # keep the range test short: 2 passes of 5 batches
    monkeypatch.setattr(lr_find_module, "MAX_PASSES", 2)
    result = fit(data=str(tiny_data), img_size=32, epochs=1, batch_size=8, workers=0, cache="off", lr="auto",
                 augment="none", out=str(tmp_path / "run"), model="simple_cnn", model_options={"widths": [8, 16]}, verbose=False)
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    recorded = json.loads((result.run_dir / "lr_find.json").read_text())
    assert isinstance(config["lr"], float) and 1e-7 <= config["lr"] <= 10
    assert config["lr"] == pytest.approx(recorded["suggestion"]) and len(recorded["lrs"]) == 10
    assert (result.run_dir / "lr_find.png").is_file()


def test_cli_help_bad_range_and_unreadable_data(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(app, ["lr-find", "--help"]).output
    assert "--steps" in help_text and "--optimizer" in help_text
    with pytest.raises(CnnlabError, match="start_lr < end_lr"):
        lr_find(torch.nn.Linear(1, 1), [], "adamw", PIPE, start_lr=1.0, end_lr=0.1)
    (tmp_path / "broken.jpg").write_text("not an image")
    dataset = ImageDataset([Sample(str(tmp_path / "broken.jpg"), 0)] * 2, Preprocessing.for_size(8).eval_transform(), 10)
    unreadable_only = make_loader(dataset, 1, workers=0, train=True)
    with pytest.raises(CnnlabError, match="no readable images"):
        lr_find(torch.nn.Linear(1, 1), unreadable_only, "adamw", PIPE)
