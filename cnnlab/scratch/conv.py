"""2-D convolution from scratch: the layer torch calls conv2d, its gradients, and true convolution.

A convolution layer slides a small kernel over the image and, at every position, takes the weighted
sum of the pixels under it: a feature filter that lights up where the image looks like the kernel.
Two formulas go by the name "convolution":

    cross-correlation   out(i, j) = Σ_x Σ_y kernel(x, y)·image(i + x, j + y)   (torch's conv2d)
    true convolution    out(i, j) = Σ_x Σ_y kernel(x, y)·image(i − x, j − y)   (signal processing)

They differ only by flipping the kernel, and a network learns its kernels anyway, so deep learning
skips the flip and uses the first one. `conv2d_loop` spells the first formula out line by line;
`conv2d` computes the same numbers with one matrix product; `convolve2d` is the second formula, as in
scipy.signal.
"""

import numpy as np

from cnnlab.scratch.shapes import IntOrPair, as_pair, output_size_2d
from cnnlab.scratch.windows import check_4d, pad2d, sliding_windows

_CONVOLVE_MODES = ("full", "same", "valid")


def _as_arrays(*arrays):
    """np.asarray of each argument, leaving None (a missing bias) as None."""
    return tuple(None if a is None else np.asarray(a) for a in arrays)


def _check_conv(x, weight, bias, stride, padding, dilation):
    """Validate conv2d arguments; return (stride, padding, dilation) as pairs and (H_out, W_out)."""
    check_4d(x, "x")
    check_4d(weight, "weight", "(C_out, C_in, kH, kW)")
    in_channels = x.shape[1]
    out_channels, weight_in_channels, kernel_h, kernel_w = weight.shape
    if weight_in_channels != in_channels:
        raise ValueError(
            f"x has {in_channels} input channels but weight {weight.shape} expects {weight_in_channels}; "
            f"weight must have shape (C_out, C_in, kH, kW) with C_in = x.shape[1] = {in_channels}"
        )
    if bias is not None and np.shape(bias) != (out_channels,):
        raise ValueError(f"bias must have shape (C_out,) = ({out_channels},), got {np.shape(bias)}")
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    dilation = as_pair(dilation, "dilation")
    out_size = output_size_2d(x.shape[2:], (kernel_h, kernel_w), stride, padding, dilation)
    return stride, padding, dilation, out_size


def conv2d_loop(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> np.ndarray:
    """Cross-correlation (torch's conv2d) as plain nested loops, one line per term of the formula; slow."""
    x, weight, bias = _as_arrays(x, weight, bias)
    (stride_h, stride_w), (padding_h, padding_w), (dilation_h, dilation_w), (out_h, out_w) = _check_conv(
        x, weight, bias, stride, padding, dilation
    )
    batch, in_channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out = np.zeros((batch, out_channels, out_h, out_w), dtype=np.result_type(x, weight))
    # (u, v) are the lecture's kernel offsets (x, y); here `x` is the input batch, as in torch.
    for n in range(batch):
        for o in range(out_channels):
            for i in range(out_h):
                for j in range(out_w):
                    total = bias[o] if bias is not None else 0
                    for c in range(in_channels):  # every input channel contributes to every output channel
                        for u in range(kernel_h):
                            for v in range(kernel_w):
                                # Top-left of window (i, j) in the unpadded input, plus the tap's offset.
                                row = i * stride_h - padding_h + u * dilation_h
                                col = j * stride_w - padding_w + v * dilation_w
                                if 0 <= row < height and 0 <= col < width:  # outside: zero padding
                                    total += weight[o, c, u, v] * x[n, c, row, col]
                    out[n, o, i, j] = total
    return out  # (N, C_out, H_out, W_out)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> np.ndarray:
    """Cross-correlation of (N, C_in, H, W) with (C_out, C_in, kH, kW) weights, like torch's conv2d."""
    x, weight, bias = _as_arrays(x, weight, bias)
    stride, padding, dilation, _ = _check_conv(x, weight, bias, stride, padding, dilation)
    # (N, C_in, H_out, W_out, kH, kW)
    windows = sliding_windows(pad2d(x, padding), weight.shape[2:], stride, dilation)
    # im2col + one matrix product: tensordot copies the windows into rows of C_in·kH·kW numbers and
    # multiplies them by the weights flattened the same way; this is where all the time goes.
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # (N, H_out, W_out, C_out)
    out = out.transpose(0, 3, 1, 2)  # (N, C_out, H_out, W_out)
    if bias is not None:
        out = out + bias[:, None, None]  # one bias per output channel, broadcast over positions
    return np.ascontiguousarray(out)


def conv2d_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (grad_x, grad_weight, grad_bias) of conv2d given grad_out = dLoss/d(output)."""
    grad_out, x, weight = _as_arrays(grad_out, x, weight)
    stride, padding, dilation, out_size = _check_conv(x, weight, None, stride, padding, dilation)
    expected = (x.shape[0], weight.shape[0], *out_size)
    if np.shape(grad_out) != expected:
        raise ValueError(
            f"grad_out must have the output's shape (N, C_out, H_out, W_out) = {expected}, "
            f"got {np.shape(grad_out)}"
        )
    (stride_h, stride_w), (dilation_h, dilation_w) = stride, dilation
    (padding_h, padding_w), (out_h, out_w) = padding, out_size
    kernel_h, kernel_w = weight.shape[2:]

    # The bias is added at every position of its channel, so its gradient sums over batch and positions.
    grad_bias = grad_out.sum(axis=(0, 2, 3))  # (C_out,)

    # Each weight multiplied one pixel per window: its gradient is that pixel times grad_out, summed.
    x_padded = pad2d(x, padding)  # (N, C_in, Hp, Wp)
    # (N, C_in, H_out, W_out, kH, kW)
    windows = sliding_windows(x_padded, (kernel_h, kernel_w), stride, dilation)
    grad_weight = np.tensordot(grad_out, windows, axes=([0, 2, 3], [0, 2, 3]))  # (C_out, C_in, kH, kW)

    # Each pixel fed every window that covers it, so its gradient is the sum of what flows back from
    # them (col2im). Tap (u, v) read the pixels at rows u·d_h + i·s_h for i in range(H_out): scatter there.
    grad_x_padded = np.zeros(x_padded.shape, dtype=np.result_type(grad_out, weight))
    for u in range(kernel_h):
        rows = slice(u * dilation_h, u * dilation_h + stride_h * (out_h - 1) + 1, stride_h)
        for v in range(kernel_w):
            cols = slice(v * dilation_w, v * dilation_w + stride_w * (out_w - 1) + 1, stride_w)
            # (N, C_out, H_out, W_out) x (C_out, C_in) -> (N, C_in, H_out, W_out)
            through_tap = np.einsum("nohw,oc->nchw", grad_out, weight[:, :, u, v], optimize=True)
            grad_x_padded[:, :, rows, cols] += through_tap
    # Gradients that landed on the zero padding belong to no input pixel; rows no window reached stay 0.
    grad_x = grad_x_padded[:, :, padding_h : padding_h + x.shape[2], padding_w : padding_w + x.shape[3]]
    return np.ascontiguousarray(grad_x), grad_weight, grad_bias


def convolve2d(image: np.ndarray, kernel: np.ndarray, mode: str = "same") -> np.ndarray:
    """True 2-D convolution (flipped kernel, zero boundary) of one 2-D image, like scipy.signal.convolve2d."""
    if mode not in _CONVOLVE_MODES:
        raise ValueError(f"mode must be one of {_CONVOLVE_MODES}, got {mode!r}")
    for name, array in (("image", image), ("kernel", kernel)):
        if np.ndim(array) != 2 or np.size(array) == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array (H, W), got shape {np.shape(array)}")
    image, kernel = np.asarray(image), np.asarray(kernel)
    (height, width), (kernel_h, kernel_w) = image.shape, kernel.shape

    # out(i, j) = Σ kernel(x, y)·image(i − x, j − y) is cross-correlation with the kernel flipped in
    # both axes. Padding by k − 1 zeros keeps every placement that overlaps the image in one pixel.
    flipped = kernel[::-1, ::-1]
    full_padding = (kernel_h - 1, kernel_w - 1)
    full = conv2d(image[None, None], flipped[None, None], padding=full_padding)[0, 0]  # (H+kH−1, W+kW−1)
    if mode == "full":
        return full
    if mode == "same":
        # Centre the (H, W) output in the full one. For an odd kernel this is the lecture's centred
        # kernel, x, y ∈ [−k//2, k//2]. An even kernel has no centre; taking index (k−1)//2, as scipy
        # does, makes the window reach one pixel further up/left in the image than down/right.
        top, left = (kernel_h - 1) // 2, (kernel_w - 1) // 2
        return full[top : top + height, left : left + width]
    # "valid": only placements where one array lies entirely inside the other. Convolution is
    # symmetric in its two arguments, so scipy allows either one to be the larger.
    if not ((height >= kernel_h and width >= kernel_w) or (height <= kernel_h and width <= kernel_w)):
        raise ValueError(
            f"mode='valid' needs one array at least as large as the other in every dimension, "
            f"got image {image.shape} and kernel {kernel.shape}; use mode='same' or 'full'"
        )
    top, left = min(height, kernel_h) - 1, min(width, kernel_w) - 1
    return full[top : top + abs(height - kernel_h) + 1, left : left + abs(width - kernel_w) + 1]
