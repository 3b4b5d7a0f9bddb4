"""cnnlab.filters: named and .npy kernels through the NumPy conv2d, shapes by the formula, the PNG written."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnlab.errors import CnnlabError
from cnnlab.commands.filters import KERNELS, LUMINANCE, filter_image, load_kernel
from cnnlab.data.images import read_image, save_image
from cnnlab.scratch import output_size


@pytest.fixture
def edge_image(tmp_path):
    """40x60 PNG: black left of column 30, white from column 30 on (a vertical edge)."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, 30:] = 255
    path = tmp_path / "edge.png"
    save_image(pixels, path)
    return path


def _noise_image(path, height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    save_image(pixels, path)
    return pixels


def test_sobel_x_fires_exactly_at_the_vertical_edge(edge_image):
    result = filter_image(edge_image, "sobel-x", stride=1, padding=1, size=0)
    assert result.input_shape == (3, 40, 60) and result.output_shape == (1, 40, 60)
    inner = result.output[0, 1:-1, 1:-1]  # away from the zero padding, which makes its own edges
    columns = np.arange(1, 59)
    # a window straddles the edge at columns 29 and 30: right column 1+2+1 = 4 times white (luminance 1)
    at_edge = np.isin(columns, [29, 30])
    assert np.allclose(inner[:, at_edge], 4.0, atol=1e-4)
    assert np.abs(inner[:, ~at_edge]).max() < 1e-4


def test_output_shapes_follow_the_formula_with_stride_padding_and_pooling(tmp_path):
    path = tmp_path / "noise.png"
    _noise_image(path, 42, 59)
    result = filter_image(path, "laplacian", stride=2, padding=0, pool="max", pool_size=2, size=0)
    height, width = output_size(42, 3, 2, 0), output_size(59, 3, 2, 0)
    assert (height, width) == (20, 29)  # (42 - 3)//2 + 1, (59 - 3)//2 + 1
    assert result.conv_shape == (1, 20, 29)
    assert result.output_shape == (1, output_size(20, 2, 2), output_size(29, 2, 2)) == (1, 10, 14)
    assert result.title == "input 3x42x59 → conv k=3x3 s=2 p=0 → 1x20x29 → maxpool 2 → 1x10x14"
    # (42 - 3)/2 leaves the last input row unread; pooling 29 columns in pairs leaves the last one
    assert any("conv" in note and "last 1 row(s) and 0 column(s)" in note for note in result.notes)
    assert any("maxpool" in note and "last 0 row(s) and 1 column(s)" in note for note in result.notes)


def test_average_pooling_is_the_block_mean(tmp_path):
    path = tmp_path / "noise.png"
    _noise_image(path, 16, 24)
    conv = filter_image(path, "sharpen", size=0).output  # (1, 16, 24)
    pooled = filter_image(path, "sharpen", pool="avg", pool_size=4, size=0).output  # (1, 4, 6)
    assert np.allclose(pooled[0], conv[0].reshape(4, 4, 6, 4).mean(axis=(1, 3)), atol=1e-5)


def test_a_2d_kernel_filters_the_luminance(tmp_path):
    path = tmp_path / "noise.png"
    pixels = _noise_image(path, 12, 10).astype(np.float64) / 255
    result = filter_image(path, "box", padding=0, size=0)
    luminance = pixels @ LUMINANCE  # (H, W)
    expected = np.mean([luminance[i:i + 10, j:j + 8] for i in range(3) for j in range(3)], axis=0)
    assert np.allclose(result.output[0], expected, atol=1e-5)


def test_large_images_are_reduced_and_the_note_says_so(tmp_path):
    path = tmp_path / "tall.png"
    _noise_image(path, 300, 200)
    result = filter_image(path, "gaussian", padding=2, size=64)
    assert result.original_size == (300, 200)
    # short side 200 -> 64; the long side 300 -> 96, give or take the rounding of the decoder's reduction
    _, height, width = result.input_shape
    assert width == 64 and abs(height - 96) <= 1
    assert result.output_shape == (1, height, width)  # 5x5 with padding 2 keeps the size
    assert any(f"reduced 200x300 to 64x{height}" in note for note in result.notes)


def test_png_shows_input_and_output_side_by_side(edge_image, tmp_path):
    out = tmp_path / "out" / "sobel.png"
    result = filter_image(edge_image, "sobel-x", out=out, size=0)
    assert result.out == out and out.exists()
    picture = read_image(out).float()  # (3, H, W)
    assert picture.shape[2] > picture.shape[1]  # two panels side by side: wider than tall
    assert picture.std() > 20  # not blank
    right = picture[:, :, picture.shape[2] // 2:]
    assert right.std() > 10  # the output panel shows the edge response


def test_npy_kernels_2d_and_4d(tmp_path, edge_image):
    two_d = tmp_path / "sobel.npy"
    np.save(two_d, KERNELS["sobel-x"][0])
    named = filter_image(edge_image, "sobel-x", size=0).output
    assert np.allclose(filter_image(edge_image, str(two_d), size=0).output, named, atol=1e-5)

    identity = np.zeros((3, 3, 1, 1))  # C_out = C_in = 3, a 1x1 kernel copying each channel
    identity[[0, 1, 2], [0, 1, 2]] = 1
    four_d = tmp_path / "identity.npy"
    np.save(four_d, identity)
    result = filter_image(edge_image, four_d, padding=0, size=0, out=tmp_path / "rgb.png")
    expected = read_image(edge_image).numpy() / 255
    assert result.output_shape == (3, 40, 60) and np.allclose(result.output, expected, atol=1e-6)
    assert read_image(tmp_path / "rgb.png").float().std() > 20

    luminance_4d = tmp_path / "two.npy"
    np.save(luminance_4d, np.stack([KERNELS["sobel-x"][0], KERNELS["sobel-y"][0]])[:, None])  # (2, 1, 3, 3)
    result = filter_image(edge_image, luminance_4d, size=0)
    assert result.output_shape == (2, 40, 60)
    assert np.allclose(result.output[0], named[0], atol=1e-5)


@pytest.mark.parametrize("array, message", [
    (np.ones(3), "must be 2-D"),
    (np.ones((2, 3, 3)), "must be 2-D"),
    (np.array([["a", "b"], ["c", "d"]]), "real numbers"),
    (np.ones((1, 2, 3, 3)), "C_in = 2"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
])
def test_bad_npy_kernels_are_clear_errors(tmp_path, array, message):
    path = tmp_path / "k.npy"
    np.save(path, array)
    with pytest.raises(CnnlabError, match=message) as error:
        load_kernel(str(path))
    assert str(path) in str(error.value)


def test_missing_unreadable_and_unknown_kernels(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        load_kernel(str(tmp_path / "nope.npy"))
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CnnlabError, match="cannot read kernel file"):
        load_kernel(str(pickled))
    with pytest.raises(CnnlabError, match="did you mean 'sobel-x'"):
        load_kernel("sobelx")
    assert load_kernel("gaussian")[0].shape == (1, 1, 5, 5)
    assert all(k.shape in ((3, 3), (5, 5)) for k, _ in KERNELS.values())


def test_bad_arguments(edge_image):
    with pytest.raises(CnnlabError, match="stride"):
        filter_image(edge_image, "box", stride=0)
    with pytest.raises(CnnlabError, match="max, avg"):
        filter_image(edge_image, "box", pool="min")
    with pytest.raises(CnnlabError, match="does not fit"):
        filter_image(edge_image, "box", padding=0, pool="max", pool_size=50, size=0)


def test_cli_filter(edge_image, tmp_path):
    from cnnlab.cli import app

    out = tmp_path / "cli.png"
    result = CliRunner().invoke(app, ["filter", str(edge_image), "--kernel", "sobel-y", "--pool", "avg",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1x40x60 → avgpool 2 → 1x20x30" in result.output
    assert read_image(out).shape[2] > read_image(out).shape[1]
