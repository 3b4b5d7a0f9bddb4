"""cnnlab.scratch.shapes: known answers from the lecture, and torch's output shapes as the reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cnnlab.scratch import OutputSize, as_pair, output_size, output_size_2d, output_size_info

from .strategies import SETTINGS
from .torch_reference import single_threaded


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((6, 3), OutputSize(size=4, exact=True, dropped=0)),  # the lecture: 6x6 input, 3x3 kernel -> 4x4
        ((1000, 3, 1, 1), OutputSize(size=1000, exact=True, dropped=0)),  # "same" padding keeps the size
        ((6, 3, 2), OutputSize(size=2, exact=False, dropped=1)),  # (6 − 3)/2 + 1 = 2.5: last row ignored
        ((7, 3, 2), OutputSize(size=3, exact=True, dropped=0)),
        ((7, 2, 2), OutputSize(size=3, exact=False, dropped=1)),  # 2x2 pooling of an odd size
        ((224, 7, 2, 3), OutputSize(size=112, exact=False, dropped=0)),  # ResNet stem: only padding is left
        ((10, 3, 1, 0, 2), OutputSize(size=6, exact=True, dropped=0)),  # dilation 2: the kernel spans 5
        ((10, 3, 3, 0, 2), OutputSize(size=2, exact=False, dropped=2)),
        ((3, 3), OutputSize(size=1, exact=True, dropped=0)),
    ],
)
def test_output_size_known_answers(args, expected):
    assert output_size_info(*args) == expected
    assert output_size(*args) == expected.size


def test_output_size_2d_takes_ints_and_pairs():
    assert output_size_2d((6, 6), 3) == (4, 4)
    sizes = output_size_2d((32, 17), kernel_size=(3, 5), stride=(1, 2), padding=(1, 0), dilation=(2, 1))
    assert sizes == (30, 7)
    assert output_size_2d([224, 224], 7, stride=2, padding=3) == (112, 112)


def test_output_size_below_one_is_a_clear_error():
    message = r"output size would be < 1: .* = 2 \+ 2\*0 = 2, .* span.* = 3; use a larger"
    with pytest.raises(ValueError, match=message):
        output_size(2, 3)
    with pytest.raises(ValueError, match=r"^width: output size would be < 1"):
        output_size_2d((8, 2), 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [((5, 0), "kernel_size must be >= 1"), ((5, 3, 0), "stride must be >= 1"),
      ((5, 3, 1, -1), "padding must be >= 0"), ((5, 3, 1, 0, 0), "dilation must be >= 1"),
     ((0, 1, 1, 1), "size must be >= 1")],
)
def test_output_size_rejects_invalid_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        output_size(*args)


def test_as_pair():
    assert as_pair(3, "stride") == (3, 3)
    assert as_pair((1, 2), "stride") == (1, 2)
    assert as_pair(np.int64(2), "stride") == (2, 2)
    for bad in (2.0, (1, 2, 3), "3", (1.5, 2)):
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            as_pair(bad, "stride")


@SETTINGS
@given(
    size=st.integers(0, 20),
    kernel_size=st.integers(1, 6),
    stride=st.integers(1, 5),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 3),
)
def test_output_size_matches_torch_conv2d_shapes(size, kernel_size, stride, padding, dilation):
    # torch is the reference: along H, with W = 1 and a 1-wide kernel so only H matters.
    x = torch.zeros(1, 1, size, 1, dtype=torch.float64)
    weight = torch.zeros(1, 1, kernel_size, 1, dtype=torch.float64)
    try:
        with single_threaded():
            expected = F.conv2d(x, weight, stride=stride, padding=(padding, 0), dilation=dilation).shape[2]
    except RuntimeError:  # torch: "Kernel size can't be greater than actual input size", or size 0
        with pytest.raises(ValueError):
            output_size(size, kernel_size, stride, padding, dilation)
        return
    assert output_size(size, kernel_size, stride, padding, dilation) == expected


@SETTINGS
@given(
    size=st.integers(1, 20),
    kernel_size=st.integers(1, 6),
    stride=st.integers(1, 5),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 3),
)
def test_dropped_rows_really_are_ignored_by_torch(size, kernel_size, stride, padding, dilation):
    span = dilation * (kernel_size - 1) + 1
    if size + 2 * padding < span:
        return  # empty output: covered by the test above
    info = output_size_info(size, kernel_size, stride, padding, dilation)
    assert info.exact == ((size + 2 * padding - span) % stride == 0)
    weight = torch.ones(1, 1, kernel_size, 1, dtype=torch.float64)

    def conv_with_rows_set(rows):
        x = torch.zeros(1, 1, size, 1, dtype=torch.float64)
        x[0, 0, rows, 0] = 1.0
        with single_threaded():
            return F.conv2d(x, weight, stride=stride, padding=(padding, 0), dilation=dilation)

    # The last `dropped` rows change nothing: every window ends before them.
    if info.dropped:
        assert conv_with_rows_set(slice(size - info.dropped, size)).abs().max() == 0
        # ...and the row just before them is the last tap of the last window, so it is read (unless
        # that tap lies in the top padding, i.e. no input row is read at all: size=1, stride=3, padding=1).
        if info.dropped < size:
            assert conv_with_rows_set([size - info.dropped - 1]).abs().max() == 1
    elif padding == 0 and info.exact:
        assert conv_with_rows_set([size - 1]).abs().max() == 1  # exact division reaches the last row
