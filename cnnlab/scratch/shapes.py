"""How big a convolution's or pooling's output is, and what it silently leaves out.

Along one axis a window of `kernel_size` taps, spaced `dilation` apart, slides over the input padded
by `padding` zeros on each side, moving `stride` steps at a time. It spans d·(k−1)+1 input rows, so

    size_out = floor((size + 2·padding − dilation·(kernel_size − 1) − 1) / stride) + 1

which for dilation = 1 is the lecture's (H + 2p − k)/s + 1. When the division is not exact the
window never reaches the last rows: they are ignored without any warning ("handle with care").
(A stride larger than the span also skips rows between windows; that is by design, not a leftover.)

Design: `output_size` returns a plain int, because that is what callers need to build arrays;
`output_size_info` returns an `OutputSize` that also says whether the division was exact and how many
input rows were dropped. Both raise ValueError when the output would be empty.
"""

import operator
from dataclasses import dataclass

IntOrPair = int | tuple[int, int]


@dataclass(frozen=True)
class OutputSize:
    """Output length along one axis, plus what the sliding window left out."""

    size: int
    """Number of output positions along this axis (>= 1)."""
    exact: bool
    """True when the stride divides the span evenly, so the last window ends on the last padded row."""
    dropped: int
    """Input rows (not padding) after the last window, which the layer never reads; 0 when exact."""


def as_pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """Turn an int or an (h, w) pair into an (h, w) tuple of ints, as torch does for its arguments."""
    try:
        if isinstance(value, tuple | list):
            if len(value) == 2:
                return (operator.index(value[0]), operator.index(value[1]))
        else:
            number = operator.index(value)  # accepts Python and NumPy integers, rejects 2.0
            return (number, number)
    except TypeError:
        pass
    raise ValueError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")


def _check_arguments(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> None:
    """Reject arguments torch rejects, naming the argument and the allowed range."""
    for name, value, minimum in (
        ("size", size, 1),
        ("kernel_size", kernel_size, 1),
        ("stride", stride, 1),
        ("padding", padding, 0),
        ("dilation", dilation, 1),
    ):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def output_size_info(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> OutputSize:
    """Output length along one axis, whether the stride divides evenly, and how many input rows it drops."""
    _check_arguments(size, kernel_size, stride, padding, dilation)
    span = dilation * (kernel_size - 1) + 1  # input rows one window touches, holes included
    room = size + 2 * padding - span  # how far the window can still move after its first position
    if room < 0:
        raise ValueError(
            f"output size would be < 1: the padded input, size + 2*padding = {size} + 2*{padding} = "
            f"{size + 2 * padding}, is shorter than the kernel's span, dilation*(kernel_size-1)+1 = "
            f"{dilation}*({kernel_size}-1)+1 = {span}; use a larger input, more padding, "
            f"or a smaller kernel_size or dilation"
        )
    steps, remainder = divmod(room, stride)
    # The `remainder` padded rows after the last window are never read; the last `padding` of them are
    # zeros, so only the rest are real input that the layer silently ignores.
    return OutputSize(size=steps + 1, exact=remainder == 0, dropped=max(0, remainder - padding))


def output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length along one axis: floor((size + 2p − d·(k−1) − 1) / s) + 1; ValueError if < 1."""
    return output_size_info(size, kernel_size, stride, padding, dilation).size


def output_size_2d(
    input_size: tuple[int, int],
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> tuple[int, int]:
    """Output (H_out, W_out) for an (H, W) input; each argument is an int or an (h, w) pair."""
    height, width = as_pair(tuple(input_size), "input_size")
    kernel_h, kernel_w = as_pair(kernel_size, "kernel_size")
    stride_h, stride_w = as_pair(stride, "stride")
    padding_h, padding_w = as_pair(padding, "padding")
    dilation_h, dilation_w = as_pair(dilation, "dilation")
    sizes = []
    for axis, args in (
        ("height", (height, kernel_h, stride_h, padding_h, dilation_h)),
        ("width", (width, kernel_w, stride_w, padding_w, dilation_w)),
    ):
        try:
            sizes.append(output_size(*args))
        except ValueError as error:
            raise ValueError(f"{axis}: {error}") from None
    return (sizes[0], sizes[1])
