"""cnnlab.images: every odd or broken file a user's folder can hold, built in a few lines each.

The `write_*` helpers are reused by tests/test_datacheck.py.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from cnnlab.errors import ImageReadError
from cnnlab.data.images import (ALPHA_BACKGROUND, DEFAULT_MAX_PIXELS, encode_png, image_header, image_size,
                               inspect_image, is_image_file, read_image, read_pil, save_image)

# --------------------------------------------------------------------------------------------
# file writers (one small function per kind of file)
# --------------------------------------------------------------------------------------------


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 that looks photo-like to a JPEG codec: smooth gradients, edges, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    f = rng.uniform(3, 12, 6)  # another scene per seed: different seeds are different pictures, not near-copies
    image = np.stack([120 + 80 * np.sin(f[0] * x + f[1] * y), 120 + 70 * np.cos(f[2] * y - f[3] * x),
                      110 + 60 * np.sin(f[4] * x) * np.cos(f[5] * y)], axis=-1)
    cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.5)
    image[(x - cx) ** 2 + (y - cy) ** 2 < 0.03] = (230, 200, 40)  # a hard-edged disc
    top = rng.uniform(0.5, 0.8)
    image[int(height * top):int(height * (top + 0.1)), int(width * 0.1):int(width * 0.6)] = (30, 40, 160)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def write_good_jpeg(path: Path, height: int = 48, width: int = 64, seed: int = 0) -> Path:
    save_image(natural_image(height, width, seed), path)
    return path


def write_text_as_jpeg(path: Path) -> Path:
    path.write_text("this is not an image\n")
    return path


def write_truncated_jpeg(path: Path) -> Path:
    save_image(natural_image(120, 160), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut in the middle of the entropy-coded data
    return path


def write_cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (32, 24), (255, 0, 0, 0)).save(path)  # pure cyan ink
    return path


def write_rgba_png(path: Path) -> Path:
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 64  # red at a quarter opacity
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def write_16bit_png(path: Path, value: int = 32768) -> Path:
    Image.fromarray(np.full((24, 32), value, np.uint16)).save(path)  # mode I;16
    with Image.open(path) as image:
        assert image.mode == "I;16"
    return path


def write_palette_png(path: Path, transparent_index: int | None = None) -> Path:
    image = Image.new("P", (32, 24), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black, index 1 green
    image.paste(1, (0, 0, 16, 24))  # left half green, right half index 0
    if transparent_index is None:
        image.save(path)
    else:
        image.save(path, transparency=transparent_index)
    return path


def write_exif6_jpeg(path: Path) -> Path:
    """Stored 40 wide x 20 high with a red block in the stored top-left; EXIF says 'turn 90 deg clockwise'."""
    array = np.zeros((20, 40, 3), np.uint8)
    array[:6, :6] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(path, exif=exif, quality=95)
    return path


def write_animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (16, 16), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid 8x8 PNG whose IHDR (CRC fixed up) claims width x height."""
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])  # IHDR data starts at byte 16
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


def write_jpeg_bomb(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid 8x8 JPEG (~630 bytes) whose SOF0 header claims width x height."""
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)  # SOF0: length(2) precision(1) H(2) W(2)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------
# good files: shape, dtype, reduced decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("min_size", [None, 50, 100, 188, 300, 375])
def test_read_image_is_uint8_chw_with_short_side_at_least_min_size(tmp_path, suffix, min_size):
    path = tmp_path / f"photo{suffix}"
    save_image(natural_image(375, 500), path)
    image = read_image(path, min_size=min_size)
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    short = min(image.shape[1:])
    if min_size is None:
        assert tuple(image.shape) == (3, 375, 500)
    else:
        # Reduced by an integer factor, never below min_size and never kept at 2x min_size or more.
        assert min_size <= short < 2 * min_size or short == 375
        assert image.shape[2] / image.shape[1] == pytest.approx(500 / 375, rel=0.02)


def test_read_image_never_upsamples_small_images(tmp_path):
    path = write_good_jpeg(tmp_path / "small.jpg", height=40, width=60)
    assert tuple(read_image(path, min_size=224).shape) == (3, 40, 60)


def test_read_image_equals_read_pil(tmp_path):
    path = write_good_jpeg(tmp_path / "a.jpg")
    assert torch.equal(read_image(path), torch.from_numpy(np.array(read_pil(path))).permute(2, 0, 1))


@pytest.fixture(scope="module")
def photo_jpeg(tmp_path_factory) -> Path:
    """A 2000x1500 photo-like JPEG, written once for the draft-decoding tests."""
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    save_image(natural_image(1500, 2000, seed=1), path, quality=90)
    return path


@pytest.mark.parametrize("min_size", [100, 188, 375, 750])
def test_jpeg_draft_decode_matches_full_decode_then_resize(photo_jpeg, min_size):
    reduced = read_pil(photo_jpeg, min_size=min_size)
    full = read_pil(photo_jpeg)
    assert full.size == (2000, 1500) and min(reduced.size) >= min_size
    target = (reduced.size[0] // 2, reduced.size[1] // 2)  # same size, same resampling for both
    ours = np.asarray(reduced.resize(target, Image.Resampling.BILINEAR), dtype=np.float64)
    reference = np.asarray(full.resize(target, Image.Resampling.BILINEAR), dtype=np.float64)
    assert np.abs(ours - reference).mean() < 3.0


def test_jpeg_decoder_allocates_only_the_reduced_size(photo_jpeg, monkeypatch):
    """Memory per worker: with min_size, the full-resolution buffer is never allocated for a JPEG."""
    allocated = []
    original = ImageFile.ImageFile.load_prepare

    def recording_load_prepare(self):
        allocated.append(self.size)
        original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", recording_load_prepare)
    read_image(photo_jpeg, min_size=100)
    assert allocated == [(250, 188)]  # 1/8 scale: 2000/8 x ceil(1500/8)


def test_draft_threshold_is_twice_min_size(tmp_path):
    """A short side of exactly 2 * min_size is decoded at 1/2 scale (the old `>` missed this case)."""
    path = tmp_path / "photo.jpg"
    save_image(natural_image(448, 600), path)
    assert read_pil(path, min_size=224).size == (300, 224)
    assert read_pil(path, min_size=225).size == (600, 448)


def test_is_image_file():
    assert is_image_file("a/B.JPG") and is_image_file(b"x.tiff") and not is_image_file("notes.txt")


# --------------------------------------------------------------------------------------------
# unreadable files: ImageReadError naming the path and the reason
# --------------------------------------------------------------------------------------------


def _read_error(path, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as caught:
        read_image(path, **kwargs)
    assert caught.value.path == str(path) and str(path) in str(caught.value)
    return caught.value


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    error = _read_error(path)
    assert error.problem == "empty-file" and "0 bytes" in error.reason


def test_text_file_named_jpg(tmp_path):
    error = _read_error(write_text_as_jpeg(tmp_path / "notes.jpg"))
    assert error.problem == "not-an-image" and "not an image" in error.reason


def test_missing_file(tmp_path):
    assert _read_error(tmp_path / "nope.jpg").problem == "missing"


@pytest.mark.parametrize("min_size", [None, 32])
def test_truncated_jpeg_raises(tmp_path, min_size):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    error = _read_error(write_truncated_jpeg(tmp_path / "cut.jpg"), min_size=min_size)
    assert error.problem == "truncated-or-corrupt" and "truncated" in error.reason


def test_truncated_png_raises(tmp_path):
    path = tmp_path / "cut.png"
    save_image(natural_image(64, 64), path)
    path.write_bytes(path.read_bytes()[:-200])
    assert _read_error(path).problem == "truncated-or-corrupt"


def test_cnnlab_does_not_enable_pil_truncated_loading():
    import cnnlab.data.cache  # noqa: F401 - importing is the test: no module may flip PIL's global
    import cnnlab.data.check  # noqa: F401
    import cnnlab.data.folders  # noqa: F401
    import cnnlab.data.transforms  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("write_bomb", [write_png_bomb, write_jpeg_bomb])
def test_decompression_bomb_header_is_refused_before_any_pixel_buffer(tmp_path, monkeypatch, write_bomb):
    path = write_bomb(tmp_path / ("bomb.png" if write_bomb is write_png_bomb else "bomb.jpg"))
    assert path.stat().st_size < 1000

    def no_allocation(*args):
        raise AssertionError("a pixel buffer was allocated for a forged header")

    monkeypatch.setattr(PIL.Image.core, "new", no_allocation)  # every PIL pixel buffer starts here
    error = _read_error(path)
    assert error.problem == "over-pixel-cap"
    assert "20000x20000" in error.reason and "pixel cap of 200 MP" in error.reason
    with pytest.raises(ImageReadError, match="pixel cap"):
        image_size(path)
    info = inspect_image(path)
    assert [(p.severity, p.problem) for p in info.problems] == [("error", "over-pixel-cap")]


def test_pixel_cap_is_ours_not_pils(tmp_path, monkeypatch):
    """PIL's global limit neither refuses what our cap allows, nor warns, nor replaces our message."""
    path = write_good_jpeg(tmp_path / "a.jpg", height=100, width=100)  # 10,000 pixels
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would raise above 2,000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        assert tuple(read_image(path).shape) == (3, 100, 100)
    error = _read_error(path, max_pixels=5000)
    assert error.problem == "over-pixel-cap" and "100x100" in error.reason
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000  # restored after each header read
    assert DEFAULT_MAX_PIXELS == 200_000_000


# --------------------------------------------------------------------------------------------
# bytes in memory (uploads): the same readers, the same pixels, the same refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"min_size": 40}, {"scale": 0.3}])
@pytest.mark.parametrize("writer, name", [(write_good_jpeg, "a.jpg"), (write_exif6_jpeg, "turned.jpg"),
                                          (write_16bit_png, "g16.png"), (write_rgba_png, "rgba.png")])
def test_bytes_decode_exactly_as_the_file(tmp_path, writer, name, kwargs):
    path = writer(tmp_path / name)
    from_bytes = read_image("upload", data=path.read_bytes(), **kwargs)
    assert torch.equal(from_bytes, read_image(path, **kwargs))
    assert image_header("upload", data=path.read_bytes()) == image_header(path)


@pytest.mark.parametrize("writer, name, problem", [
    (lambda path: path.write_bytes(b"") or path, "empty.jpg", "empty-file"),
    (write_text_as_jpeg, "notes.jpg", "not-an-image"),
    (write_truncated_jpeg, "cut.jpg", "truncated-or-corrupt"),
    (write_png_bomb, "bomb.png", "over-pixel-cap"),
    (write_jpeg_bomb, "bomb.jpg", "over-pixel-cap"),
])
def test_bad_bytes_are_refused_like_bad_files(tmp_path, monkeypatch, writer, name, problem):
    data = writer(tmp_path / name).read_bytes()
    if problem == "over-pixel-cap":  # refused from the header: no pixel buffer is ever allocated
        monkeypatch.setattr(PIL.Image.core, "new", lambda *args: pytest.fail("a pixel buffer for a forged header"))
    with pytest.raises(ImageReadError) as caught:
        read_image("photo.jpg", data=data, min_size=32)
    assert caught.value.problem == problem and caught.value.path == "photo.jpg"


def test_encode_png_round_trips(tmp_path):
    array = natural_image(20, 30)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(array))
    assert np.array_equal(read_image(path).permute(1, 2, 0).numpy(), array)


# --------------------------------------------------------------------------------------------
# mode conversions (identical for training and prediction: both call read_image)
# --------------------------------------------------------------------------------------------


def _pixel(path, x: int, y: int) -> list[int]:
    return read_image(path)[:, y, x].tolist()


def test_cmyk_becomes_rgb(tmp_path):
    path = write_cmyk_jpeg(tmp_path / "cmyk.jpg")
    assert np.allclose(_pixel(path, 5, 5), [0, 255, 255], atol=3)  # cyan ink = no red


def test_rgba_is_composited_on_grey(tmp_path):
    path = write_rgba_png(tmp_path / "rgba.png")
    alpha = 64 / 255
    expected = [round(255 * alpha + 128 * (1 - alpha)), round(128 * (1 - alpha)), round(128 * (1 - alpha))]
    assert expected == [160, 96, 96]
    assert np.allclose(_pixel(path, 3, 3), expected, atol=1)
    assert ALPHA_BACKGROUND == (128, 128, 128)


def test_la_fully_transparent_is_grey(tmp_path):
    path = tmp_path / "la.png"
    Image.new("LA", (8, 8), (200, 0)).save(path)
    assert _pixel(path, 0, 0) == [128, 128, 128]


@pytest.mark.parametrize("value, expected", [(32768, 128), (65535, 255), (0, 0), (257 * 40, 40)])
def test_16bit_grey_png_is_scaled_not_clipped(tmp_path, value, expected):
    path = write_16bit_png(tmp_path / "g16.png", value)
    assert _pixel(path, 0, 0) == [expected] * 3
    if value == 32768:
        with Image.open(path) as image:
            assert image.convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # the bug avoided


def test_16bit_rgb_png_uses_high_byte(tmp_path):
    path = tmp_path / "rgb16.png"
    rows = np.zeros((4, 5, 3), ">u2")
    rows[...] = (0x8000, 0xFFFF, 0x1000)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    assert _pixel(path, 2, 2) == [128, 255, 16]
    assert "16 bits per channel" in inspect_image(path).problems[0].detail


def test_palette_without_and_with_transparency(tmp_path):
    plain = write_palette_png(tmp_path / "p.png")
    assert _pixel(plain, 2, 2) == [0, 255, 0] and _pixel(plain, 30, 2) == [0, 0, 0]
    transparent = write_palette_png(tmp_path / "pt.png", transparent_index=0)
    assert _pixel(transparent, 2, 2) == [0, 255, 0] and _pixel(transparent, 30, 2) == [128, 128, 128]


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "l.png"
    Image.new("L", (8, 6), 77).save(path)
    assert tuple(read_image(path).shape) == (3, 6, 8) and _pixel(path, 1, 1) == [77, 77, 77]


def test_exif_orientation_6_is_applied(tmp_path):
    path = write_exif6_jpeg(tmp_path / "turned.jpg")
    image = read_image(path)
    assert tuple(image.shape) == (3, 40, 20)  # stored 40x20 (W x H), used 20 wide x 40 high
    # Turning 90 deg clockwise moves the stored top-left corner to the top-right.
    assert image[0, :5, -5:].float().mean() > 200 and image[1:, :5, -5:].float().mean() < 40
    assert image[0, :5, :5].float().mean() < 40
    with Image.open(path) as stored:
        reference = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert np.array_equal(image.permute(1, 2, 0).numpy(), reference)
    assert image_size(path) == (20, 40)
    assert tuple(read_image(path, min_size=8).shape) == (3, 20, 10)  # reduced, then turned


def test_exif_orientation_in_png_is_applied_too(tmp_path):
    jpeg = read_image(write_exif6_jpeg(tmp_path / "turned.jpg"))
    path = tmp_path / "turned.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(jpeg.permute(2, 1, 0).numpy()[::-1].copy()).save(path, exif=exif)  # stored unturned
    assert torch.equal(read_image(path), jpeg)
    assert image_size(path) == (20, 40) and inspect_image(path, decode=False).orientation == 6


def test_animated_gif_gives_first_frame(tmp_path):
    path = write_animated_gif(tmp_path / "anim.gif")
    assert _pixel(path, 8, 8) == [255, 0, 0]
    assert inspect_image(path).frames == 3


def test_multipage_tiff_gives_first_page(tmp_path):
    path = tmp_path / "pages.tif"
    pages = [Image.new("RGB", (12, 10), colour) for colour in [(0, 0, 255), (255, 255, 0)]]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    image = read_pil(path)
    assert image.getpixel((3, 3)) == (0, 0, 255)
    assert inspect_image(path).frames == 2


# --------------------------------------------------------------------------------------------
# inspect_image (used by the data check)
# --------------------------------------------------------------------------------------------


def _problems(info) -> list[tuple[str, str]]:
    return [(p.severity, p.problem) for p in info.problems]


def test_inspect_good_jpeg(tmp_path):
    info = inspect_image(write_good_jpeg(tmp_path / "a.jpg", height=48, width=64))
    assert (info.format, info.width, info.height, info.mode, info.orientation, info.frames) == \
        ("JPEG", 64, 48, "RGB", 1, 1)
    assert info.problems == [] and info.readable and info.megapixels == pytest.approx(64 * 48 / 1e6)


@pytest.mark.parametrize("writer, name, expected, detail", [
    (write_cmyk_jpeg, "cmyk.jpg", [("info", "unusual-mode")], "CMYK"),
    (write_rgba_png, "rgba.png", [("info", "unusual-mode")], "RGBA"),
    (write_16bit_png, "g16.png", [("info", "unusual-mode")], "16-bit"),
    (write_palette_png, "p.png", [("info", "unusual-mode")], "palette"),
    (write_exif6_jpeg, "turned.jpg", [("info", "exif-rotated")], "orientation 6"),
    (write_animated_gif, "anim.gif", [("info", "unusual-mode"), ("info", "multi-frame")], "3 frames"),
    (write_truncated_jpeg, "cut.jpg", [("error", "truncated-or-corrupt")], "truncated"),
    (write_text_as_jpeg, "notes.jpg", [("error", "not-an-image")], "not an image"),
])
def test_inspect_reports_problems(tmp_path, writer, name, expected, detail):
    info = inspect_image(writer(tmp_path / name))
    assert _problems(info) == expected
    assert any(detail in p.detail for p in info.problems)
    assert info.readable == all(severity != "error" for severity, _ in expected)


def test_inspect_thumbnail_is_grey_levels_and_does_not_depend_on_the_file_size(tmp_path):
    """The near-duplicate check compares these thumbnails, so a resized copy must give (almost) the same one."""
    from cnnlab.data.images import THUMBNAIL_SIZE
    y, x = np.mgrid[0:240, 0:320]
    picture = np.where((x > 100) & (x < 220) & (y > 60) & (y < 180), 40, 230).astype(np.uint8)  # dark box on light
    picture = np.repeat(picture[..., None], 3, axis=2)
    save_image(picture, tmp_path / "full.png")
    half_size = Image.fromarray(picture).resize((160, 120), Image.Resampling.LANCZOS)
    save_image(np.asarray(half_size), tmp_path / "half.jpg")
    full, half = inspect_image(tmp_path / "full.png"), inspect_image(tmp_path / "half.jpg")
    side = THUMBNAIL_SIZE
    a = np.frombuffer(full.thumbnail, dtype=np.uint8).reshape(side, side).astype(int)
    b = np.frombuffer(half.thumbnail, dtype=np.uint8).reshape(side, side).astype(int)
    # (side, side) grey levels of the image squeezed to a square; the box spans x 101..219 of 320, so along the
    # middle row: light, the edge in the column holding x = 100..110, dark (Lanczos rings by a few levels), light
    row, start, end = a[side // 2], side * 100 // 320, side * 220 // 320
    assert np.abs(row[:start - 1] - 230).max() <= 8 and np.abs(row[start + 1:end - 1] - 40).max() <= 8
    assert 40 < row[start] < 230 and np.abs(row[end + 1:] - 230).max() <= 8 and a[2, 2] == 230
    assert np.abs(a - b).mean() < 2 and np.abs(a - b).max() < 25  # another file size, another codec: same thumbnail
    assert inspect_image(tmp_path / "full.png").to_dict()["thumbnail"] is None  # facts only in the JSON-able dict
