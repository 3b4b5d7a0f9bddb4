"""cnnlab.scratch.pool against torch.nn.functional.max_pool2d and avg_pool2d."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cnnlab.scratch import avg_pool2d, max_pool2d

from .strategies import SETTINGS, pool_configs
from .torch_reference import check_forward, to_torch


@SETTINGS
@given(pool_configs(with_dilation=True))
def test_max_pool2d_matches_torch(config):
    check_forward(max_pool2d, F.max_pool2d, config.pop("x"), **config)


@SETTINGS
@given(pool_configs(with_dilation=False))
def test_avg_pool2d_matches_torch(config):
    check_forward(avg_pool2d, F.avg_pool2d, config.pop("x"), **config)


def test_max_pool2d_known_answer():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(max_pool2d(x, 2)[0, 0], [[5, 7], [13, 15]])  # stride defaults to 2


def test_max_pool2d_padding_never_wins():
    # All values negative: zero padding would win the max; torch pads with −inf.
    x = -1 - np.random.default_rng(0).random((2, 3, 5, 5))
    out = check_forward(max_pool2d, F.max_pool2d, x, kernel_size=3, stride=2, padding=1)
    assert (out < 0).all()


def test_avg_pool2d_counts_padding_in_the_mean():
    # Each 2x2 window of the padded 4x4 holds one real 1 and three padded zeros.
    out = avg_pool2d(np.ones((1, 1, 2, 2)), kernel_size=2, padding=1)
    np.testing.assert_array_equal(out[0, 0], [[0.25, 0.25], [0.25, 0.25]])


def test_pooling_drops_the_rows_the_stride_does_not_reach():
    # 5 rows, windows of 2 with stride 2: rows 0-1, 2-3; row 4 is ignored ("handle with care").
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 4, :] = 100.0
    assert max_pool2d(x, 2).shape == (1, 1, 2, 2)
    assert max_pool2d(x, 2).max() == 0


@SETTINGS
@given(
    kernel_size=st.integers(1, 5),
    padding=st.integers(0, 4),
    op_name=st.sampled_from(["max_pool2d", "avg_pool2d"]),
)
def test_pooling_rejects_padding_over_half_the_kernel_like_torch(kernel_size, padding, op_name):
    ours, theirs = {
        "max_pool2d": (max_pool2d, F.max_pool2d),
        "avg_pool2d": (avg_pool2d, F.avg_pool2d),
    }[op_name]
    x = np.zeros((1, 1, 12, 12))
    try:
        theirs(to_torch(x), kernel_size, padding=padding)
    except RuntimeError:
        with pytest.raises(ValueError, match="padding must be at most kernel_size // 2"):
            ours(x, kernel_size, padding=padding)
        return
    expected_shape = tuple(theirs(to_torch(x), kernel_size, padding=padding).shape)
    assert ours(x, kernel_size, padding=padding).shape == expected_shape


def test_pooling_rejects_an_empty_output_and_bad_input():
    with pytest.raises(ValueError, match="output size would be < 1"):
        max_pool2d(np.zeros((1, 1, 2, 2)), 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\)"):
        avg_pool2d(np.zeros((4, 4)), 2)
    with pytest.raises(RuntimeError):  # torch agrees that the output would be empty
        F.max_pool2d(torch.zeros(1, 1, 2, 2), 3)
