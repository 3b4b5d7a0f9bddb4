"""Every window a kernel sees, as one strided view of the padded input (im2col without the copy).

Convolution and pooling are both "look at each window, reduce it": convolution takes a weighted sum,
max pooling the largest value, average pooling the mean. Building the windows once as a view lets
each of them be a single NumPy reduction instead of Python loops over positions.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def check_4d(array: np.ndarray, name: str, layout: str = "(N, C, H, W)") -> None:
    """Raise ValueError unless the array is 4-D, naming the argument and the layout it should have."""
    if np.ndim(array) != 4:
        raise ValueError(
            f"{name} must have shape {layout}, got {np.ndim(array)}-D shape {np.shape(array)}; "
            f"add the missing axes, e.g. image[None, None] for a single 2-D image"
        )


def pad2d(x: np.ndarray, padding: tuple[int, int], value: float = 0) -> np.ndarray:
    """Pad the last two axes of (N, C, H, W) by (p_h, p_w) on each side with a constant value."""
    padding_h, padding_w = padding
    if padding_h == 0 and padding_w == 0:
        return x
    return np.pad(
        x, ((0, 0), (0, 0), (padding_h, padding_h), (padding_w, padding_w)), constant_values=value
    )  # (N, C, H + 2p_h, W + 2p_w)


def sliding_windows(
    x_padded: np.ndarray,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> np.ndarray:
    """Read-only view (N, C, H_out, W_out, kH, kW) of the windows over an already padded input."""
    kernel_h, kernel_w = kernel_size
    stride_h, stride_w = stride
    dilation_h, dilation_w = dilation
    # A dilated window spans d·(k−1)+1 rows; take every such block, then keep every d-th row inside it.
    span_h = dilation_h * (kernel_h - 1) + 1
    span_w = dilation_w * (kernel_w - 1) + 1
    # (N, C, Hp − span_h + 1, Wp − span_w + 1, span_h, span_w)
    blocks = sliding_window_view(x_padded, (span_h, span_w), axis=(2, 3))
    # Positions step by the stride: ceil((Hp − span_h + 1) / s) = floor((Hp − span_h) / s) + 1 = H_out,
    # so the rows the formula drops when s does not divide evenly are dropped here too.
    return blocks[:, :, ::stride_h, ::stride_w, ::dilation_h, ::dilation_w]  # (N, C, H_out, W_out, kH, kW)
