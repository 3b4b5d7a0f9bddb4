"""TIFF and BigTIFF read region by region (cnnlab.data.tiff through cnnlab.data.images), the seamless resize
(cnnlab.data.resample) against torchvision, and the memory a region read takes. Every file is written here with
tifffile; the reference is the array written, resized by torchvision's resize(antialias=True)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import PIL.Image
import pytest
import tifffile
import torch
from torchvision.transforms.v2.functional import resize

from cnnlab.data import tiff
from cnnlab.data.check import check_dataset
from cnnlab.data.images import (ALPHA_BACKGROUND, image_header, inspect_image, open_region_reader, read_image,
                                read_pil, save_image)
from cnnlab.data.resample import resample, source_span, taps
from cnnlab.errors import ImageReadError

# torchvision resizes uint8 in two integer passes (each rounded); we resize in float32 and round once
RESIZE_TOLERANCE = 1


def picture(height: int = 400, width: int = 600, channels: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """(H, W, C) smooth gradients, edges and noise: resizing it is not trivially exact."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    peak = np.iinfo(dtype).max if dtype != np.float32 else 1.0
    layers = [(np.sin(x / (7 + 5 * c)) * np.cos(y / (11 + 3 * c)) + 1) / 2 for c in range(channels)]
    array = np.stack(layers, -1) * 0.8 + rng.uniform(0, 0.2, (height, width, channels))
    array[(x // 37 + y // 23) % 5 == 0] = 1.0  # hard edges
    return (array * peak).astype(dtype)


def reference(array: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> (3, h, w) by torchvision at size (width, height)."""
    pixels = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    return pixels if size == (array.shape[1], array.shape[0]) else resize(pixels, [size[1], size[0]], antialias=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: int = RESIZE_TOLERANCE) -> None:
    assert actual.shape == expected.shape and actual.dtype == torch.uint8
    assert (actual.int() - expected.int()).abs().max().item() <= tolerance


# --------------------------------------------------------------------------------------------
# the resize, region by region
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, target", [((400, 600), (200, 300)), ((400, 600), (123, 187)),
                                            ((400, 600), (97, 61)), ((40, 60), (100, 150)), ((400, 600), (1, 1))])
def test_a_region_resized_alone_equals_the_same_region_of_the_whole(source, target):
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (*source, 3), dtype=np.uint8))
    whole = resize(image.permute(2, 0, 1).double(), list(target), antialias=True).permute(1, 2, 0).numpy()
    for y0, y1, x0, x1 in [(0, target[0], 0, target[1]), (target[0] // 3, target[0], target[1] // 4, target[1])]:
        rows, columns = taps(source[0], target[0], y0, y1), taps(source[1], target[1], x0, x1)
        (top, bottom), (left, right) = source_span(rows[0]), source_span(columns[0])
        region = resample(resample(image.numpy()[top:bottom, left:right], 1, *columns, left), 0, *rows, top)
        assert np.abs(region - whole[y0:y1, x0:x1]).max() < 1e-3  # float32 against torchvision's float64


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------

LAYOUTS = {
    "tiled deflate": dict(tile=(128, 128), compression="zlib"),
    "striped": dict(rowsperstrip=50),
    "one uncompressed strip": dict(rowsperstrip=400),  # read row by row, not as one 720 KB strip
    "BigTIFF tiled": dict(tile=(64, 64), bigtiff=True),
    "planar tiled": dict(tile=(64, 64), planarconfig="separate"),
    "striped LZW with predictor": dict(rowsperstrip=32, compression="lzw", predictor=True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_region_reads_at_scales_1_and_half_match_torchvision(tmp_path, layout):
    array = picture()
    path = tmp_path / "image.tif"
    options = dict(LAYOUTS[layout])
    if options.get("planarconfig") == "separate":
        tifffile.imwrite(path, np.moveaxis(array, -1, 0), photometric="rgb", **options)
    else:
        tifffile.imwrite(path, array, photometric="rgb", **options)
    assert torch.equal(read_image(path), reference(array, (600, 400)))  # scale 1: the very samples
    for scale in (1.0, 0.5, 0.3):
        expected = reference(array, (round(600 * scale), round(400 * scale)))
        assert_close(read_image(path, scale=scale), expected)
        with open_region_reader(path, scale) as reader:
            assert reader.size == (round(600 * scale), round(400 * scale))
            for x, y, w, h in [(0, 0, *reader.size), (7, 13, 40, 30), (reader.size[0] - 50, reader.size[1] - 9, 50, 9)]:
                assert_close(reader.read(x, y, w, h), expected[:, y:y + h, x:x + w])


def test_a_pyramid_level_at_the_scale_is_read_instead_of_level_0(tmp_path):
    array = picture()
    half = picture(200, 300, seed=5)  # another picture: shows which level was read
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(array, tile=(64, 64), subifds=1, photometric="rgb")
        writer.write(half, tile=(64, 64), subfiletype=1, photometric="rgb")
    assert torch.equal(read_image(path, scale=0.5), reference(half, (300, 200)))  # the level itself, exactly
    assert_close(read_image(path, scale=0.25), reference(half, (150, 100)))  # resized from the level above
    assert_close(read_image(path, scale=0.7), reference(array, (420, 280)))  # larger than the level: level 0
    assert inspect_image(path).width == 600


def test_reduced_pages_after_the_image_are_a_pyramid_too(tmp_path):
    path = tmp_path / "pages.tif"
    half = picture(200, 300, seed=5)
    with tifffile.TiffWriter(path) as writer:  # the layout libvips and most slide scanners write
        writer.write(picture(), tile=(64, 64), photometric="rgb")
        writer.write(half, tile=(64, 64), subfiletype=1, photometric="rgb")
    assert torch.equal(read_image(path, scale=0.5), reference(half, (300, 200)))
    assert inspect_image(path).frames == 1


def test_jpeg_compressed_tiles(tmp_path):
    array = picture()
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, array, tile=(128, 128), photometric="rgb", compression="jpeg",
                     compressionargs={"level": 95})
    decoded = tifffile.imread(path)  # lossy: the reference is what the codec gives back
    assert_close(read_image(path, scale=0.5), reference(decoded, (300, 200)))


# --------------------------------------------------------------------------------------------
# samples -> 8-bit RGB
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("largest, peak", [(4000, 4095), (255, 255), (60000, 65535), (1023, 1023)])
def test_16_bit_is_scaled_by_the_bit_depth_its_values_use(tmp_path, largest, peak):
    values = np.linspace(0, largest, 60 * 40).reshape(40, 60).astype(np.uint16)
    path = tmp_path / "g16.tif"
    tifffile.imwrite(path, values, photometric="minisblack", tile=(16, 16))
    expected = np.clip(np.rint(values.astype(np.float64) * 255 / peak), 0, 255).astype(np.uint8)
    pixels = read_image(path)
    assert torch.equal(pixels, torch.from_numpy(expected).expand(3, -1, -1))  # grey copied to R, G, B
    assert f"value * 255 / {peak}" in inspect_image(path).problems[0].detail
    # the same rule at every scale: the whole image is what a region read of it gives
    with open_region_reader(path, 0.5) as reader:
        assert torch.equal(reader.read(0, 0, *reader.size), read_image(path, scale=0.5))


def test_12_bit_data_in_16_bits_is_not_dark(tmp_path):
    path = tmp_path / "camera.tif"
    tifffile.imwrite(path, np.full((32, 32), 4000, dtype=np.uint16), photometric="minisblack")
    assert read_image(path)[0, 0, 0] == round(4000 * 255 / 4095)  # 249, not 4000 / 257 = 16


def test_min_is_white_is_inverted_and_float_uses_its_range(tmp_path):
    tifffile.imwrite(tmp_path / "white.tif", np.array([[0, 255]], dtype=np.uint8).repeat(8, 0),
                     photometric="miniswhite")
    assert read_image(tmp_path / "white.tif")[:, 0, :2].tolist() == [[255, 0]] * 3
    tifffile.imwrite(tmp_path / "float.tif", np.array([[-1.0, 0.0, 3.0]], dtype=np.float32).repeat(4, 0))
    assert read_image(tmp_path / "float.tif")[0, 0].tolist() == [0, 64, 255]


def test_rgba_is_composited_on_the_grey_pngs_use(tmp_path):
    array = picture(channels=4)
    array[:40, :, 3] = 0  # fully transparent rows
    tifffile.imwrite(tmp_path / "rgba.tif", array, photometric="rgb", extrasamples=["unassalpha"], tile=(64, 64))
    PIL.Image.fromarray(array, mode="RGBA").save(tmp_path / "rgba.png")
    from_tiff, from_png = read_image(tmp_path / "rgba.tif"), read_image(tmp_path / "rgba.png")
    assert from_tiff[:, :40].eq(torch.tensor(ALPHA_BACKGROUND).view(3, 1, 1)).all()
    assert_close(from_tiff, from_png)  # PIL composites in integers: at most 1 apart


def test_palette_and_one_bit(tmp_path):
    colormap = np.zeros((3, 256), dtype=np.uint16)
    colormap[:, 1] = (65535, 0, 32896)  # index 1: (255, 0, 128)
    tifffile.imwrite(tmp_path / "p.tif", np.ones((8, 8), dtype=np.uint8), photometric="palette", colormap=colormap)
    assert read_image(tmp_path / "p.tif")[:, 0, 0].tolist() == [255, 0, 128]
    tifffile.imwrite(tmp_path / "bw.tif", np.eye(8, dtype=bool), photometric="minisblack")
    assert read_image(tmp_path / "bw.tif")[:, 3, 3].tolist() == [255] * 3
    assert read_image(tmp_path / "bw.tif")[:, 3, 4].tolist() == [0] * 3


def test_orientation_tag_turns_the_image_and_its_regions(tmp_path):
    array = picture(40, 60)
    path = tmp_path / "turned.tif"
    tifffile.imwrite(path, array, photometric="rgb", tile=(16, 16), extratags=[(274, 3, 1, 6, True)])
    upright = np.rot90(array, k=-1)  # orientation 6: stored lying on its left side, turned 90 degrees clockwise
    assert image_header(path) == (40, 60, "TIFF")
    assert torch.equal(read_image(path), reference(upright, (40, 60)))
    with open_region_reader(path, 0.5) as reader:
        assert reader.size == (20, 30)
        assert_close(reader.read(3, 5, 10, 12), reference(upright, (20, 30))[:, 5:17, 3:13])


def test_bytes_in_memory_read_as_the_file(tmp_path):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, picture(), tile=(64, 64), photometric="rgb")
    assert torch.equal(read_image("upload.tif", data=path.read_bytes(), scale=0.3), read_image(path, scale=0.3))
    assert image_header("upload", data=path.read_bytes()) == image_header(path)


def test_read_pil_and_min_size_reduce_as_for_other_formats(tmp_path):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, picture(), tile=(64, 64), photometric="rgb")
    image = read_pil(path, min_size=100)  # factor 4 keeps the short side >= 100: 150 x 100
    assert image.size == (150, 100) and image.mode == "RGB"
    assert torch.equal(read_image(path, min_size=100), torch.from_numpy(np.array(image)).permute(2, 0, 1))


def test_other_formats_have_a_region_reader_too(tmp_path):
    path = tmp_path / "photo.png"
    save_image(picture(), path)
    with open_region_reader(path, 0.5) as reader:
        assert reader.size == (300, 200)
        assert torch.equal(reader.read(10, 20, 30, 40), read_image(path, scale=0.5)[:, 20:60, 10:40])
        with pytest.raises(ValueError, match="not inside"):
            reader.read(290, 0, 20, 10)


# --------------------------------------------------------------------------------------------
# refusals: one line naming the file and what to do
# --------------------------------------------------------------------------------------------


def _refusal(path, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as caught:
        read_image(path, **kwargs)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize("array, options, detail", [
    (np.zeros((8, 8, 2), np.uint8), dict(photometric="minisblack", planarconfig="contig"), "2 channel(s)"),
    (np.zeros((8, 8), np.complex64), {}, "complex"),
    (np.zeros((8, 8), np.int16), {}, "signed"),
])
def test_unsupported_tiffs_are_one_clear_error(tmp_path, array, options, detail):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, array, **options)
    error = _refusal(path)
    assert error.problem == "unsupported-tiff" and detail in error.reason and "save it as" in error.reason
    assert [(p.severity, p.problem) for p in inspect_image(path).problems] == [("error", "unsupported-tiff")]


def test_over_the_pixel_cap_is_refused_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((300, 400, 3), np.uint8), tile=(64, 64), photometric="rgb")

    def no_decoding(*args):
        raise AssertionError("a tile was decoded for an image over the cap")

    monkeypatch.setattr(tiff.Level, "read", no_decoding)
    error = _refusal(path, max_pixels=100_000)
    assert error.problem == "over-pixel-cap" and "400x300" in error.reason and "--max-pixels" in error.reason
    with pytest.raises(ImageReadError, match="pixel cap"):
        open_region_reader(path, 0.5, max_pixels=100_000)


def test_a_truncated_tiff_is_corrupt_not_a_crash(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, picture(), tile=(64, 64), photometric="rgb", compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _refusal(path).problem == "truncated-or-corrupt"


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_images_over_pils_bomb_limit_open_when_under_our_cap(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"large{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, picture(), tile=(64, 64), photometric="rgb")
    else:
        save_image(picture(), path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # the file is 240,000 px: PIL alone refuses it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert tuple(read_image(path, scale=0.5).shape) == (3, 200, 300)
        assert inspect_image(path).readable


# --------------------------------------------------------------------------------------------
# the data check's facts
# --------------------------------------------------------------------------------------------


def test_data_check_reports_format_bit_depth_channels_and_size(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        tifffile.imwrite(tmp_path / name / "g16.tif", picture(channels=1, dtype=np.uint16)[..., 0], tile=(64, 64))
        save_image(picture(seed=3 if name == "a" else 4), tmp_path / name / "photo.png")
    info = inspect_image(tmp_path / "a" / "g16.tif")
    assert (info.format, info.bits, info.channels, info.width, info.height, info.mode) == \
        ("TIFF", 16, 1, 600, 400, "I;16")
    report = check_dataset(tmp_path, workers=1)
    assert report.formats == {"TIFF 16-bit 1-channel": 2, "PNG 8-bit 3-channel": 2}
    assert "formats: 2 TIFF 16-bit 1-channel, 2 PNG 8-bit 3-channel" in report.describe()


def test_data_check_says_when_strips_are_too_large_to_read_by_region(tmp_path):
    path = tmp_path / "one-strip.tif"  # 2100 x 2100 RGB in one deflate strip: 13 MB decoded for any region
    tifffile.imwrite(path, np.zeros((2100, 2100, 3), np.uint8), photometric="rgb", rowsperstrip=2100,
                     compression="zlib")
    notes = {p.problem: p.detail for p in inspect_image(path).problems}
    assert "strips of 2100 rows (13 MB each)" in notes["tiff-strips"] and "tiled" in notes["tiff-strips"]
    tifffile.imwrite(path, np.zeros((2100, 2100, 3), np.uint8), photometric="rgb", tile=(256, 256),
                     compression="zlib")
    assert "tiff-strips" not in {p.problem for p in inspect_image(path).problems}


# --------------------------------------------------------------------------------------------
# memory: a region of a large TIFF, read without the whole image
# --------------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import tifffile
    from cnnlab.data.images import open_region_reader, read_image

    def reset():
        open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from now

    def mb(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024

    path = sys.argv[1]
    read_image(path, scale=0.01)  # every code path once: imports and first-use allocations are not measured
    result = {}
    for name, read in [("region", lambda: open_region_reader(path, 1.0).read(3000, 3000, 512, 512)),
                       ("whole at 0.125", lambda: read_image(path, scale=0.125)),
                       ("tifffile.imread", lambda: tifffile.imread(path))]:
        reset()
        before = mb("VmRSS:")
        pixels = read()
        result[name] = mb("VmHWM:") - before
        del pixels
    print(json.dumps(result))
""")



@pytest.mark.slow
def test_reading_a_region_of_an_8000_px_tiff_takes_far_less_than_the_image(tmp_path):
    side, tile = 8000, 256
    path = tmp_path / "large.tif"

    def tiles():  # written a tile at a time; flat tiles compress to almost nothing
        for row in range(0, side, tile):
            for column in range(0, side, tile):
                yield np.full((tile, tile, 3), (row // tile * 7 + column // tile) % 256, dtype=np.uint8)

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="zlib")
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    grown = json.loads(run.stdout)  # MB of peak memory above what the process held before each read
    whole = side * side * 3 / 2**20  # 183 MB
    assert grown["tifffile.imread"] > 0.8 * whole  # the probe sees a whole decode
    assert grown["region"] < 0.15 * whole  # a 512 px region: a few tiles and their chunk cache
    # 1000 px out, read a band of rows at a time: a 16 MB band and two rows of tiles (12 MB), not the image
    assert grown["whole at 0.125"] < 0.35 * whole
