"""The schedules of a run: progressive resizing's image side per epoch."""

from __future__ import annotations

from cnnlab.training.optim import epoch_size


def test_progressive_sizes_grow_to_full_size_for_the_last_quarter():
    assert [epoch_size(e, 12, 128, 32) for e in range(1, 13)] == [64, 64, 64, 64, 96, 96, 96, 96, 128, 128, 128, 128]
    assert [epoch_size(e, 3, 128, 32) for e in range(1, 4)] == [128, 128, 128]  # too short to grow
    assert epoch_size(1, 20, 224, 32) == 96 and epoch_size(15, 20, 224, 32) == 224  # multiples of the stride
