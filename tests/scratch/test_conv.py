"""cnnlab.scratch.conv against torch.nn.functional.conv2d, torch autograd and scipy.signal.convolve2d."""

import numpy as np
import pytest
import scipy.signal
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cnnlab.scratch import conv2d, conv2d_backward, conv2d_loop, convolve2d

from .strategies import SETTINGS, conv_configs
from .torch_reference import assert_close, check_conv2d_backward, check_forward

# The lecture's example: a 6x6 image, bright on the left, dark on the right, and a vertical-edge kernel.
EDGE_IMAGE = np.array([[10, 10, 10, 0, 0, 0]] * 6, dtype=np.float64)
EDGE_KERNEL = np.array([[1, 0, -1]] * 3, dtype=np.float64)
EDGE_RESPONSE = np.array([[0, 30, 30, 0]] * 4, dtype=np.float64)  # lights up where the edge is


# --- conv2d: torch semantics (cross-correlation) -------------------------------------------------


@pytest.mark.parametrize("op", [conv2d, conv2d_loop])
def test_conv2d_detects_the_lecture_vertical_edge(op):
    out = op(EDGE_IMAGE[None, None], EDGE_KERNEL[None, None])  # (1, 1, 4, 4)
    np.testing.assert_array_equal(out[0, 0], EDGE_RESPONSE)


@SETTINGS
@given(conv_configs())
def test_conv2d_matches_torch(config):
    check_forward(conv2d, F.conv2d, config.pop("x"), config.pop("weight"), config.pop("bias"), **config)


# Tiny configurations for the loop version: it runs seven nested Python loops.
TINY_CONV = conv_configs(
    max_batch=2, max_channels=2, max_kernel=3, max_stride=2, max_padding=1, max_dilation=2, max_extra=3
)


@SETTINGS
@given(TINY_CONV)
def test_conv2d_loop_matches_torch(config):
    check_forward(conv2d_loop, F.conv2d, config.pop("x"), config.pop("weight"), config.pop("bias"), **config)


@SETTINGS
@given(conv_configs())
def test_conv2d_backward_matches_torch_autograd(config):
    x, weight, bias = config.pop("x"), config.pop("weight"), config.pop("bias")
    check_conv2d_backward(conv2d_backward, x, weight, bias, **config)


def test_conv2d_keeps_float32():
    x, weight = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    out = conv2d(x, weight, np.zeros(3, np.float32), stride=2, padding=1)
    assert out.dtype == np.float32
    assert out.shape == (1, 3, 3, 3)
    assert out[0, 0, 1, 1] == 18  # a window fully inside: 2 channels x 9 ones


@pytest.mark.parametrize("op", [conv2d, conv2d_loop])
def test_conv2d_rejects_mismatched_channels(op):
    with pytest.raises(ValueError, match=r"3 input channels.*expects 2"):
        op(np.zeros((1, 3, 5, 5)), np.zeros((4, 2, 3, 3)))


@pytest.mark.parametrize("op", [conv2d, conv2d_loop])
def test_conv2d_rejects_an_empty_output(op):
    with pytest.raises(ValueError, match=r"height: output size would be < 1"):
        op(np.zeros((1, 1, 2, 9)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"width: .*dilation\*\(kernel_size-1\)\+1 = 2\*\(3-1\)\+1 = 5"):
        op(np.zeros((1, 1, 9, 4)), np.zeros((1, 1, 3, 3)), dilation=2)


def test_conv2d_rejects_bad_shapes_and_arguments():
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\)"):
        conv2d(np.zeros((5, 5)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"bias must have shape \(C_out,\) = \(4,\)"):
        conv2d(np.zeros((1, 1, 5, 5)), np.zeros((4, 1, 3, 3)), bias=np.zeros(3))
    with pytest.raises(ValueError, match=r"stride must be >= 1"):
        conv2d(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), stride=0)
    with pytest.raises(ValueError, match=r"padding must be an int or a pair"):
        conv2d(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), padding=(1, 1, 1))


def test_conv2d_backward_rejects_a_wrong_grad_out_shape():
    with pytest.raises(ValueError, match=r"grad_out must have the output's shape .* \(2, 4, 3, 3\)"):
        conv2d_backward(np.zeros((2, 4, 5, 5)), np.zeros((2, 1, 5, 5)), np.zeros((4, 1, 3, 3)))


# --- convolve2d: true convolution, as in signal processing --------------------------------------


@SETTINGS
@given(
    image_shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel_shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    mode=st.sampled_from(["full", "same", "valid"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_convolve2d_matches_scipy(image_shape, kernel_shape, mode, seed):
    rng = np.random.default_rng(seed)
    image, kernel = rng.standard_normal(image_shape), rng.standard_normal(kernel_shape)
    try:
        expected = scipy.signal.convolve2d(image, kernel, mode=mode)
    except ValueError:  # 'valid' with neither array at least as large as the other in every dimension
        with pytest.raises(ValueError, match="mode='valid' needs one array at least as large"):
            convolve2d(image, kernel, mode=mode)
        return
    assert_close(convolve2d(image, kernel, mode=mode), expected, f"convolve2d {mode} vs scipy")


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("kernel_shape", [(1, 1), (2, 2), (3, 3), (4, 4), (2, 3), (5, 4), (1, 6)])
def test_convolve2d_even_and_odd_kernels_match_scipy(mode, kernel_shape):
    # An asymmetric kernel and image, so a missing flip or an off-by-one centre cannot go unnoticed.
    rng = np.random.default_rng(7)
    image, kernel = rng.standard_normal((8, 7)), rng.standard_normal(kernel_shape)
    assert_close(convolve2d(image, kernel, mode), scipy.signal.convolve2d(image, kernel, mode=mode), mode)


def test_convolve2d_same_is_the_lecture_formula_with_a_centred_kernel():
    # out(i, j) = Σ_x Σ_y kernel(x, y)·image(i − x, j − y), x, y ∈ [−r, r], zero outside the image.
    rng = np.random.default_rng(1)
    image, kernel = rng.standard_normal((6, 7)), rng.standard_normal((3, 3))
    r = 1
    expected = np.zeros_like(image)
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            for x in range(-r, r + 1):
                for y in range(-r, r + 1):
                    if 0 <= i - x < image.shape[0] and 0 <= j - y < image.shape[1]:
                        expected[i, j] += kernel[x + r, y + r] * image[i - x, j - y]
    assert_close(convolve2d(image, kernel, "same"), expected)


def test_convolution_is_cross_correlation_with_a_flipped_kernel():
    rng = np.random.default_rng(2)
    image, kernel = rng.standard_normal((7, 9)), rng.standard_normal((3, 2))
    flipped = kernel[::-1, ::-1]
    assert_close(convolve2d(image, kernel, "valid"), conv2d(image[None, None], flipped[None, None])[0, 0])
    # And the two differ for an asymmetric kernel: the flip matters.
    unflipped = conv2d(image[None, None], kernel[None, None])[0, 0]
    assert not np.allclose(convolve2d(image, kernel, "valid"), unflipped)


def test_convolve2d_keeps_integers_like_scipy():
    image = np.arange(12).reshape(3, 4)
    kernel = np.array([[1, 2], [3, 4]])
    out = convolve2d(image, kernel, "full")
    np.testing.assert_array_equal(out, scipy.signal.convolve2d(image, kernel, "full"))
    assert out.dtype.kind == "i"


def test_convolve2d_rejects_bad_input():
    with pytest.raises(ValueError, match="mode must be one of"):
        convolve2d(np.zeros((3, 3)), np.ones((2, 2)), mode="circular")
    with pytest.raises(ValueError, match=r"image must be a non-empty 2-D array"):
        convolve2d(np.zeros((1, 3, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="mode='valid' needs"):
        convolve2d(np.zeros((2, 5)), np.ones((3, 4)), mode="valid")
