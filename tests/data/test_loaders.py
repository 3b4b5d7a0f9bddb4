"""The epoch sampler: weighted draws balance the classes, and stay a pure function of (seed, epoch)."""

from __future__ import annotations

import torch

from cnnlab.data.loaders import EpochSampler


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
