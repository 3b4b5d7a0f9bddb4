"""From-scratch NumPy reference implementations of the CNN building blocks; tested against PyTorch.

Pure math: arrays in, arrays out, no I/O and no torch. Shapes follow torch: (N, C, H, W) inputs,
(C_out, C_in, kH, kW) weights; stride, padding and dilation are ints or (h, w) pairs.
"""

from cnnlab.scratch.conv import conv2d, conv2d_backward, conv2d_loop, convolve2d
from cnnlab.scratch.pool import avg_pool2d, max_pool2d
from cnnlab.scratch.shapes import OutputSize, as_pair, output_size, output_size_2d, output_size_info

__all__ = [
    "OutputSize",
    "as_pair",
    "avg_pool2d",
    "conv2d",
    "conv2d_backward",
    "conv2d_loop",
    "convolve2d",
    "max_pool2d",
    "output_size",
    "output_size_2d",
    "output_size_info",
]
