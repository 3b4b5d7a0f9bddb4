"""Hypothesis strategies for random but valid conv and pooling configurations.

Each strategy draws the layer's arguments first (ints or (h, w) pairs, non-square kernels, stride,
padding, dilation) and then an input just large enough for at least one output position plus a
random margin, so every example is a legal call that torch also accepts.
"""

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

# Deterministic across runs and machines; 200 configurations per property, no per-example deadline
# because the first torch call in a process is slow.
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)


def int_or_pair(min_value: int, max_value: int) -> st.SearchStrategy:
    """An int or an (h, w) tuple of ints in [min_value, max_value]: torch accepts both."""
    value = st.integers(min_value, max_value)
    return st.one_of(value, st.tuples(value, value))


def pair(value) -> tuple[int, int]:
    """(h, w) from an int or a pair (test-side copy, so the code under test is not its own oracle)."""
    return (value, value) if isinstance(value, int) else tuple(value)


def _input_size(draw, kernel: int, padding: int, dilation: int, max_extra: int) -> int:
    """Smallest input length with output >= 1, plus a random extra of up to max_extra rows."""
    span = dilation * (kernel - 1) + 1
    return max(1, span - 2 * padding) + draw(st.integers(0, max_extra))


@st.composite
def conv_configs(
    draw,
    max_batch: int = 3,
    max_channels: int = 4,
    max_kernel: int = 4,
    max_stride: int = 3,
    max_padding: int = 2,
    max_dilation: int = 3,
    max_extra: int = 7,
) -> dict:
    """Random x, weight, bias (or None) and stride/padding/dilation for conv2d."""
    batch = draw(st.integers(1, max_batch))
    in_channels = draw(st.integers(1, max_channels))
    out_channels = draw(st.integers(1, max_channels))
    kernel_h, kernel_w = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    stride = draw(int_or_pair(1, max_stride))
    padding = draw(int_or_pair(0, max_padding))
    dilation = draw(int_or_pair(1, max_dilation))
    (padding_h, padding_w), (dilation_h, dilation_w) = pair(padding), pair(dilation)
    height = _input_size(draw, kernel_h, padding_h, dilation_h, max_extra)
    width = _input_size(draw, kernel_w, padding_w, dilation_w, max_extra)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return {
        "x": rng.standard_normal((batch, in_channels, height, width)),
        "weight": rng.standard_normal((out_channels, in_channels, kernel_h, kernel_w)),
        "bias": rng.standard_normal(out_channels) if draw(st.booleans()) else None,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
    }


@st.composite
def pool_configs(
    draw,
    with_dilation: bool,
    max_batch: int = 3,
    max_channels: int = 3,
    max_kernel: int = 4,
    max_stride: int = 3,
    max_dilation: int = 3,
    max_extra: int = 7,
) -> dict:
    """Random x and kernel_size/stride (or None)/padding (<= kernel_size // 2, as torch requires)."""
    kernel_size = draw(int_or_pair(1, max_kernel))
    kernel_h, kernel_w = pair(kernel_size)
    if draw(st.booleans()):
        padding = draw(st.integers(0, min(kernel_h, kernel_w) // 2))
    else:
        padding = (draw(st.integers(0, kernel_h // 2)), draw(st.integers(0, kernel_w // 2)))
    stride = draw(st.one_of(st.none(), int_or_pair(1, max_stride)))
    config = {"kernel_size": kernel_size, "stride": stride, "padding": padding}
    dilation = 1
    if with_dilation:
        dilation = config["dilation"] = draw(int_or_pair(1, max_dilation))
    (padding_h, padding_w), (dilation_h, dilation_w) = pair(padding), pair(dilation)
    height = _input_size(draw, kernel_h, padding_h, dilation_h, max_extra)
    width = _input_size(draw, kernel_w, padding_w, dilation_w, max_extra)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, max_batch)), draw(st.integers(1, max_channels)), height, width)
    return {"x": rng.standard_normal(shape), **config}
