"""What training does with a non-finite loss, with --weights to start from, with --freeze, progressive resizing,
class balance and MixUp/CutMix."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import cnnlab.training.loop as loop_module
import cnnlab.training.setup as setup_pieces
from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.runs.reader import read_metrics
from cnnlab.commands.train import fit
from cnnlab.training.loop import MAX_NONFINITE_STEPS
from cnnlab.training.setup import build_model, seed_everything
from cnnlab.training.state import load_training_checkpoint

TINY = {"model": "simple_cnn", "img_size": 32, "batch_size": 8, "workers": 0, "model_options": {"widths": [8, 16]}, "cache": "off",
        "verbose": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fresh_state(**options) -> dict:
    """The weights fit() starts from with these options and no --weights (seed 0)."""
    config = TrainConfig(data="unused", **{k: v for k, v in (TINY | options).items() if k != "verbose"})
    seed_everything(config.seed)
    return build_model(config, 3).state_dict()


def _inject_inf(monkeypatch, bad_steps):
    """Make the input of the training forward passes numbered in `bad_steps` (from 1) infinite."""
    original = setup_pieces.build_model

    def build_model(config, num_classes):
        model = original(config, num_classes)
        calls = [0]

        def pre_hook(module, args):
            if module.training:
                calls[0] += 1
                if calls[0] in bad_steps:
                    return (args[0] * float("inf"),)
            return None

        model.register_forward_pre_hook(pre_hook)
        return model

    monkeypatch.setattr(setup_pieces, "build_model", build_model)


def test_one_infinite_input_is_skipped_counted_and_leaves_no_trace(tiny_data, tmp_path, monkeypatch):
    _inject_inf(monkeypatch, bad_steps={3})
    result = fit(data=str(tiny_data), epochs=2, out=str(tmp_path / "run"), **TINY)
    assert result.skipped_steps == 1
    assert [row["skipped_steps"] for row in read_metrics(result.run_dir)] == [1, 0]
    assert "skipped 1 steps whose loss was not finite" in result.summary()
    assert load_training_checkpoint(result.run_dir).state.skipped_steps == 1
    weights = load_file(str(result.run_dir / "last.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    # 2 epochs x 5 batches, one skipped: BatchNorm's update from the infinite batch was undone too
    assert weights["stages.0.1.num_batches_tracked"].item() == 9
    assert len(result.history) == 2


def test_a_run_of_non_finite_losses_stops_with_advice_and_never_updates_the_weights(tiny_data, tmp_path,
                                                                                   monkeypatch):
    _inject_inf(monkeypatch, bad_steps=set(range(1, 100)))
    run = tmp_path / "run"
    with pytest.raises(CnnlabError, match=f"not a finite number \\(nan or inf\\) for {MAX_NONFINITE_STEPS} steps "
                                          "in a row.*Lower the learning rate"):
        fit(data=str(tiny_data), epochs=3, out=str(run), **TINY)
    # epoch 1 (5 skipped steps) finished and was saved: exactly the initial weights and BN statistics
    saved = load_file(str(run / "last.safetensors"))
    fresh = _fresh_state()
    assert all(torch.equal(saved[name], fresh[name]) for name in fresh)


def _first_step_weights(monkeypatch) -> list:
    """Record the model's state_dict at the start of the first training epoch."""
    original, seen = loop_module.train_one_epoch, []

    def train_one_epoch(run, *args, **kwargs):
        if not seen:
            seen.append({name: t.detach().clone() for name, t in run.parts.model.state_dict().items()})
        return original(run, *args, **kwargs)

    monkeypatch.setattr(loop_module, "train_one_epoch", train_one_epoch)
    return seen


def test_training_starts_from_a_pth_state_dict(tiny_data, tmp_path, monkeypatch):
    torch.manual_seed(123)
    state = create_model("simple_cnn", 3, widths=[8, 16], dropout=0.5, img_size=32).state_dict()
    torch.save(state, tmp_path / "start.pth")
    seen = _first_step_weights(monkeypatch)
    fit(data=str(tiny_data), epochs=1, weights=str(tmp_path / "start.pth"), out=str(tmp_path / "run"), **TINY)
    assert all(torch.equal(seen[0][name], state[name]) for name in state)
    assert not torch.equal(seen[0]["stages.0.0.weight"], _fresh_state()["stages.0.0.weight"])


def test_training_starts_from_a_runs_best_weights(tiny_run, tiny_data, tmp_path, monkeypatch):
    best = load_file(str(tiny_run.run_dir / "best.safetensors"))
    seen = _first_step_weights(monkeypatch)
    fit(data=str(tiny_data), epochs=1, weights=str(tiny_run.run_dir / "best.safetensors"),
        out=str(tmp_path / "run"), **TINY)
    assert all(torch.equal(seen[0][name], best[name]) for name in best)


def test_a_classifier_for_other_classes_starts_fresh_and_says_so(tiny_data, tmp_path, monkeypatch, capsys):
    torch.manual_seed(5)
    five_classes = create_model("simple_cnn", 5, widths=[8, 16], dropout=0.5, img_size=32).state_dict()
    torch.save(five_classes, tmp_path / "five.pt")
    seen = _first_step_weights(monkeypatch)
    fit(data=str(tiny_data), epochs=1, weights=str(tmp_path / "five.pt"), out=str(tmp_path / "run"),
        **(TINY | {"verbose": True}))
    fresh = _fresh_state()
    for name in fresh:
        expected = fresh[name] if name.startswith("fc.") else five_classes[name]
        assert torch.equal(seen[0][name], expected), name
    assert ("except the classifier (fc.weight, fc.bias), which starts fresh: the file was trained on 5 classes, "
            "this data has 3") in capsys.readouterr().err


def test_weights_for_another_model_are_refused_clearly(tiny_run, tiny_data, tmp_path):
    with pytest.raises(CnnlabError, match="holds a 'simple_cnn' model but --model is 'mlp'; pass --model simple_cnn"):
        fit(data=str(tiny_data), epochs=1, weights=str(tiny_run.run_dir / "best.safetensors"),
            out=str(tmp_path / "a"), **(TINY | {"model": "mlp", "model_options": {"hidden": 16}}))
    torch.save(create_model("simple_cnn", 3, widths=[8, 16, 32]).state_dict(), tmp_path / "deeper.pt")
    with pytest.raises(CnnlabError, match="does not fit model 'simple_cnn' \\(unexpected: stages.2.0.weight"):
        fit(data=str(tiny_data), epochs=1, weights=str(tmp_path / "deeper.pt"), out=str(tmp_path / "b"), **TINY)
    (tmp_path / "cut.safetensors").write_bytes((tiny_run.run_dir / "best.safetensors").read_bytes()[:300])
    with pytest.raises(CnnlabError, match=f"weights file {tmp_path / 'cut.safetensors'} is damaged"):
        fit(data=str(tiny_data), epochs=1, weights=str(tmp_path / "cut.safetensors"), out=str(tmp_path / "c"), **TINY)


def test_progressive_resizing_crops_tiles_and_resizes_whole_images():
    from cnnlab.training.forward import smaller_side

    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    crop = smaller_side(images, 4, keep_scale=True)  # a tile keeps its pixel scale: the centre 4 x 4
    assert torch.equal(crop, images[..., 2:6, 2:6])
    resized = smaller_side(images, 4, keep_scale=False)  # a whole image keeps its view: every pixel averaged in
    assert resized.shape == (2, 3, 4, 4)
    # a linear ramp stays a ramp over the whole range (a crop would keep only its middle)
    assert resized[0, 0, 0, 0] < images[0, 0, 2, 2] and resized[0, 0, -1, -1] > images[0, 0, 5, 5]
    assert torch.allclose(resized.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-3)


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


def test_progressive_training_feeds_smaller_images_early(tiny_data, tmp_path):
    from cnnlab.training import setup

    seen: list[int] = []
    original = setup.build_model

    def build_model(config, num_classes):
        model = original(config, num_classes)
        model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]) if module.training else None)
        return model

    setup.build_model = build_model
    try:
        fit(data=str(tiny_data), epochs=4, out=str(tmp_path / "run"), **(TINY | {"img_size": 64}))
    finally:
        setup.build_model = original
    per_epoch = [sorted(set(seen[k:k + 5])) for k in range(0, len(seen), 5)]  # 36 images, batches of 8: 5 steps
    assert per_epoch == [[32], [48], [64], [64]]  # 64 px from 3/4 of 4 epochs on; the stride of simple_cnn is 16


def test_balance_and_mixing_run_end_to_end(tiny_data, tmp_path):
    result = fit(data=str(tiny_data), epochs=2, balance="sampler", mixup=0.2, cutmix=1.0, augment_on="workers",
                 out=str(tmp_path / "run"), **TINY)
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    info = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert info["balance"] == {"requested": "sampler", "mode": "sampler", "ratio": 1.0}
