"""The recipe: weight average (EMA), progressive resizing, class balance, MixUp/CutMix in the loop, flip TTA."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cnnlab.commands.train import fit
from cnnlab.data.loaders import EpochSampler
from cnnlab.training.device import resolve_precision
from cnnlab.training.ema import WeightAverage, decay_for
from cnnlab.training.forward import InputPipeline, collect_logits
from cnnlab.training.optim import epoch_size
from cnnlab.training.setup import class_weights, resolve_balance

TINY = {"model": "simple_cnn", "img_size": 32, "batch_size": 8, "workers": 0, "model_options": {"widths": [8, 16]},
        "cache": "off", "verbose": False}


def test_weight_average_is_an_exponential_average_with_warm_up():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    average = WeightAverage(model, decay=0.9)
    assert average.current_decay() == pytest.approx(1 / 10)  # warm-up: the first update nearly copies
    start = average.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    average.update(model)
    torch.testing.assert_close(average.model[0].weight, start + 0.9)  # moved by 1 - 0.1 of the way
    assert average.model[1].num_batches_tracked.item() == 7  # integer buffers are copied
    average.steps = 10_000
    assert average.current_decay() == 0.9  # later, the decay the run's length gives
    assert decay_for(1000) == pytest.approx(0.99) and decay_for(10) == 0.9 and decay_for(10**9) == 0.9999


def test_the_saved_weights_are_the_average(tiny_data, tmp_path):
    from safetensors.torch import load_file

    averaged = fit(data=str(tiny_data), epochs=2, out=str(tmp_path / "ema"), **TINY)
    plain = fit(data=str(tiny_data), epochs=2, ema=False, out=str(tmp_path / "plain"), **TINY)
    saved = load_file(str(tmp_path / "ema" / "last.safetensors"))
    assert all(torch.equal(saved[k], v.cpu()) for k, v in averaged.model.state_dict().items())
    # the same steps, averaged: other weights than the last step's
    assert not torch.equal(saved["fc.weight"], load_file(str(tmp_path / "plain" / "last.safetensors"))["fc.weight"])
    assert json.loads((tmp_path / "ema" / "eval_val.json").read_text())["accuracy"] == \
        pytest.approx(averaged.best_val_acc)


def test_progressive_sizes_grow_to_full_size_for_the_last_quarter():
    assert [epoch_size(e, 12, 128, 32) for e in range(1, 13)] == [64, 64, 64, 64, 96, 96, 96, 96, 128, 128, 128, 128]
    assert [epoch_size(e, 3, 128, 32) for e in range(1, 4)] == [128, 128, 128]  # too short to grow
    assert epoch_size(1, 20, 224, 32) == 96 and epoch_size(15, 20, 224, 32) == 224  # multiples of the stride


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


def test_balance_auto_weights_the_loss_only_when_the_classes_are_skewed():
    skewed = resolve_balance("auto", [300, 100, 50])
    assert skewed.mode == "weights" and skewed.ratio == 6.0 and "6.0x" in skewed.note
    assert resolve_balance("auto", [120, 100, 50]).mode == "off"  # 2.4x: under the 3x threshold
    assert resolve_balance("sampler", [10, 10]).mode == "sampler"
    weights = class_weights([300, 100, 50])
    assert weights.tolist() == pytest.approx([450 / 900, 450 / 300, 450 / 150])
    # weighted by the counts they average to 1 per image: the loss keeps its scale
    assert (weights * torch.tensor([300.0, 100, 50])).sum().item() == pytest.approx(450)


def test_balance_sampler_draws_the_classes_equally_often():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = 1.0 / torch.bincount(labels).float()[labels]
    sampler = EpochSampler(100, seed=0, weights=weights)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += [labels[i].item() for i, _ in sampler]
    assert 0.45 < sum(drawn) / len(drawn) < 0.55  # the rare class is half of what is seen
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # and still a pure function of (seed, epoch)


def test_balance_and_mixing_run_end_to_end(tiny_data, tmp_path):
    result = fit(data=str(tiny_data), epochs=2, balance="sampler", mixup=0.2, cutmix=1.0, augment_on="workers",
                 out=str(tmp_path / "run"), **TINY)
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    info = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert info["balance"] == {"requested": "sampler", "mode": "sampler", "ratio": 1.0}


def test_flip_tta_averages_the_image_and_its_mirror(tiny_run):
    from cnnlab.runs.inference import open_trained

    trained = open_trained(tiny_run.run_dir)
    dataset = trained.dataset([s for s in __import__("cnnlab").find_samples(
        trained.record.config.data).splits["val"]][:5])
    loader = trained.loader(dataset, batch_size=5, workers=0)
    plain, tta = trained.logits(loader), trained.logits(loader, tta=True)
    batch = next(iter(loader))
    x = trained.pipeline(batch.images)
    with torch.no_grad():
        expected = (trained.model(x) + trained.model(x.flip(-1))) / 2
    torch.testing.assert_close(tta.logits, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(plain.logits, tta.logits)
