"""Antialiased resizing of an image one region at a time, seamless: a region resized here equals the same region
cut from the whole image resized at once.

torchvision's `resize(antialias=True)` (PIL's triangle filter) maps output pixel i of an axis resized from n_in
to n_out onto source centre c = (i + 0.5) * n_in / n_out and averages the source pixels within
max(1, n_in / n_out) of it, weighted by a triangle. The weights depend only on i, n_in and n_out, never on which
region is being read, so each output pixel can be computed from the few source pixels under it: that is how
cnnlab reads a 20,000 px TIFF at a scale a band at a time without ever holding it whole (cnnlab.data.images).

Pure NumPy, no I/O: single-threaded on purpose (a pixel band is small work, and torch's intra-op threads cost
more than the work itself on a busy machine: 32 ms instead of 0.3 ms to round a 256 px tile, measured on 2
loaded cores). Shapes: one axis at a time; `taps` gives (n, K) source indices and weights for n output pixels
(K the widest support, shorter supports padded with weight 0).
"""

from __future__ import annotations

import math

import numpy as np


def taps(in_size: int, out_size: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight), each (stop - start, K): the source pixels and weights of output pixels start..stop-1 of an
    axis resized from in_size to out_size (torchvision's antialiased bilinear, computed in float64 as it does)."""
    stop = out_size if stop is None else stop
    scale = in_size / out_size
    # downscaling widens the triangle to the source pixels one output pixel covers; upscaling is plain bilinear
    support = scale if scale >= 1.0 else 1.0
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    centre = scale * (np.arange(start, stop, dtype=np.float64) + 0.5)                # (n,)
    first = np.maximum(np.floor(centre - support + 0.5), 0).astype(np.int64)        # (n,)
    last = np.minimum(np.floor(centre + support + 0.5), in_size).astype(np.int64)   # (n,) exclusive
    width = max(1, int((last - first).max())) if len(centre) else 1
    index = first[:, None] + np.arange(width)[None, :]                              # (n, K)
    weight = np.maximum(1 - np.abs((index - centre[:, None] + 0.5) * inverse), 0)
    weight[index >= last[:, None]] = 0
    weight /= weight.sum(1, keepdims=True)
    return np.minimum(index, in_size - 1), weight.astype(np.float32)


def source_span(index: np.ndarray) -> tuple[int, int]:
    """(first, stop) of the source pixels that `taps`' index (n, K) reads."""
    return int(index.min()), int(index.max()) + 1


def resample(pixels: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray, offset: int = 0) -> np.ndarray:
    """Resize `pixels` (uint8 or float) along `axis` with `taps`' (index, weight) into float32; pixels' first
    entry along the axis is source pixel `offset`. (..., n_src, ...) -> (..., n, ...), K passes over the output,
    never a dense (n, n_src) matrix. Where the taps step through the source at a constant stride (integer factors:
    0.5 of a 20,000 px image, away from its first and last pixels) they are strided views, not gathered copies."""
    shape = list(pixels.shape)
    shape[axis] = len(index)
    out = np.empty(shape, dtype=np.float32)
    lo, hi = _strided_run(index)
    for start, stop in ((0, lo), (lo, hi), (hi, len(index))):
        if stop > start:
            where = [slice(None)] * pixels.ndim
            where[axis] = slice(start, stop)
            _accumulate(out[tuple(where)], pixels, axis, index[start:stop] - offset, weight[start:stop],
                        strided=(start, stop) == (lo, hi))
    return out


def _strided_run(index: np.ndarray) -> tuple[int, int]:
    """(lo, hi): the rows whose taps are K consecutive source pixels, each row's first a constant stride past the
    previous row's ((0, 0) when there is no such run: non-integer factors). Rows near the ends, clamped at the
    source's edges, are left out."""
    n, width = index.shape
    first = index[:, 0]
    consecutive = index[:, -1] - first == width - 1
    steps = np.diff(first)
    lo, hi = 0, n
    while hi - lo > 2 and not (consecutive[lo] and steps[lo] == steps[lo + 1]):
        lo += 1
    while hi - lo > 2 and not (consecutive[hi - 1] and steps[hi - 2] == steps[hi - 3]):
        hi -= 1
    run = steps[lo:hi - 1]
    if hi - lo < 3 or not consecutive[lo:hi].all() or run.min() != run.max() or run[0] < 1:
        return 0, 0
    return lo, hi


def _accumulate(out: np.ndarray, pixels: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray,
                strided: bool) -> None:
    """out = sum over taps k of pixels[index[:, k]] * weight[:, k], along `axis`."""
    shape = [1] * pixels.ndim
    shape[axis] = -1
    step = int(index[1, 0] - index[0, 0]) if strided and len(index) > 1 else 1
    term = None
    for k in range(index.shape[1]):
        if strided:
            where = [slice(None)] * pixels.ndim
            where[axis] = slice(int(index[0, k]), int(index[-1, k]) + 1, step)
            source = pixels[tuple(where)]  # a view
        else:
            source = np.take(pixels, index[:, k], axis=axis)
        if k == 0:
            np.multiply(source, weight[:, k].reshape(shape), out=out, casting="unsafe")
        else:
            term = np.multiply(source, weight[:, k].reshape(shape), out=term, casting="unsafe",
                               dtype=np.float32)
            out += term


def output_band(in_size: int, out_size: int, rows: int) -> int:
    """Output rows per band so that a band's source rows are about `rows` (at least 1)."""
    return max(1, math.floor(rows * out_size / in_size))
