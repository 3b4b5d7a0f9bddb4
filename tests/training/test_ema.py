"""The weight average (EMA): an exponential average with a warm-up, and the weights a run saves."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.commands.train import fit
from cnnlab.training.ema import WeightAverage, decay_for
from conftest import TINY


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
