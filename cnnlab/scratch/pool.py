"""Max and average pooling from scratch, with torch's semantics.

Pooling shrinks each channel on its own: it slides a window over it and keeps one number per window,
the largest (max pooling: "is the feature somewhere here?") or the mean (average pooling). It has no
weights. The output size follows the same formula as convolution, with stride defaulting to
kernel_size, so windows tile the input without overlap; leftover rows are dropped (see shapes.py).
"""

import numpy as np

from cnnlab.scratch.shapes import IntOrPair, as_pair, output_size_2d
from cnnlab.scratch.windows import check_4d, pad2d, sliding_windows


def _check_pool(x, kernel_size, stride, padding, dilation):
    """Validate pooling arguments as torch does; return kernel_size, stride, padding, dilation as pairs."""
    check_4d(x, "x")
    kernel_size = as_pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else as_pair(stride, "stride")
    padding, dilation = as_pair(padding, "padding"), as_pair(dilation, "dilation")
    # torch refuses padding wider than half the kernel: a window could then lie entirely in the padding.
    for kernel, pad in zip(kernel_size, padding):
        if pad > kernel // 2:
            raise ValueError(
                f"padding must be at most kernel_size // 2, as in torch: got padding={padding} for "
                f"kernel_size={kernel_size}; use padding <= {kernel_size[0] // 2, kernel_size[1] // 2}"
            )
    output_size_2d(x.shape[2:], kernel_size, stride, padding, dilation)  # raises if the output is empty
    return kernel_size, stride, padding, dilation


def max_pool2d(
    x: np.ndarray,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> np.ndarray:
    """Largest value in each window of (N, C, H, W); padding is −inf; stride defaults to kernel_size."""
    x = np.asarray(x)
    kernel_size, stride, padding, dilation = _check_pool(x, kernel_size, stride, padding, dilation)
    # Pad with the smallest value of the dtype so the padding never wins the max.
    fill = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    # (N, C, H_out, W_out, kH, kW)
    windows = sliding_windows(pad2d(x, padding, fill), kernel_size, stride, dilation)
    return windows.max(axis=(4, 5))  # (N, C, H_out, W_out)


def avg_pool2d(
    x: np.ndarray,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
) -> np.ndarray:
    """Mean of each window of (N, C, H, W); padded zeros count (torch's count_include_pad=True)."""
    x = np.asarray(x)
    kernel_size, stride, padding, dilation = _check_pool(x, kernel_size, stride, padding, 1)
    # (N, C, H_out, W_out, kH, kW)
    windows = sliding_windows(pad2d(x, padding, 0), kernel_size, stride, dilation)
    # Every window has kH·kW entries, padding included, so the divisor is always kH·kW (ceil_mode=False).
    return windows.mean(axis=(4, 5))  # (N, C, H_out, W_out)
