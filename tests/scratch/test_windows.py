"""cnnlab.scratch.windows: the strided view holds exactly the pixels the conv formula reads."""

import numpy as np
import pytest

from cnnlab.scratch.windows import check_4d, pad2d, sliding_windows


@pytest.mark.parametrize(
    ("kernel_size", "stride", "padding", "dilation"),
    [((3, 3), (1, 1), (0, 0), (1, 1)), ((2, 3), (2, 1), (1, 0), (1, 2)), ((3, 1), (3, 2), (2, 1), (2, 1))],
)
def test_window_entries_are_the_pixels_the_formula_reads(kernel_size, stride, padding, dilation):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8))
    x_padded = pad2d(x, padding)
    assert x_padded.shape == (2, 3, 9 + 2 * padding[0], 8 + 2 * padding[1])
    windows = sliding_windows(x_padded, kernel_size, stride, dilation)
    batch, channels, out_h, out_w, kernel_h, kernel_w = windows.shape
    assert (kernel_h, kernel_w) == kernel_size
    for i in range(out_h):
        for j in range(out_w):
            for u in range(kernel_h):
                for v in range(kernel_w):
                    row, col = i * stride[0] + u * dilation[0], j * stride[1] + v * dilation[1]
                    np.testing.assert_array_equal(windows[:, :, i, j, u, v], x_padded[:, :, row, col])
    # The last window still fits, and one more step would not: the output-size formula, from the view.
    assert (out_h - 1) * stride[0] + (kernel_h - 1) * dilation[0] < x_padded.shape[2]
    assert out_h * stride[0] + (kernel_h - 1) * dilation[0] >= x_padded.shape[2]


def test_pad2d_fills_only_the_border():
    padded = pad2d(np.ones((1, 1, 2, 2)), (1, 2), value=-5)
    assert padded.shape == (1, 1, 4, 6)
    assert padded[0, 0, 1:3, 2:4].tolist() == [[1, 1], [1, 1]]
    assert (padded == -5).sum() == 4 * 6 - 4


def test_check_4d_names_the_argument_and_its_layout():
    with pytest.raises(ValueError, match=r"weight must have shape \(C_out, C_in, kH, kW\), got 3-D"):
        check_4d(np.zeros((1, 3, 3)), "weight", "(C_out, C_in, kH, kW)")
    check_4d(np.zeros((1, 1, 1, 1)), "x")  # 4-D passes
