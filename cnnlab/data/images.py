"""The one module that opens image files: decode to a uint8 RGB tensor, inspect, and write images.

Every reader in cnnlab (training, evaluation, prediction, inspection, data checks) comes through
`read_pil`, so EXIF orientation, mode conversions and the pixel cap are applied identically
everywhere. The order of operations, for every format:

    open (header only) -> pixel cap -> [JPEG: DCT-domain reduction] -> decode -> RGB -> [reduce] -> EXIF turn

Unreadable files raise ImageReadError naming the path and the reason, with a short problem code ("empty-file", "not-an-image", "truncated-or-corrupt", "over-pixel-cap", ...) for reports.

Bytes already in memory (an upload to `cnnlab serve`) go through the same readers with `data=`: the same
order, the same cap from the header, the same errors; nothing is written to disk.

TIFF and BigTIFF files (found by their first bytes, whatever their name) are read with tifffile instead, region by
region (cnnlab.data.tiff: the conversion of 16-bit, float, palette, alpha and orientation is written there):

    open (header only) -> layout supported? -> pixel cap -> for each band of output rows: decode the tiles or
    strips under it (from the pyramid level nearest above the size) -> RGB -> seamless antialiased resize

so a 20,000 x 20,000 px slide read at scale 0.5 never holds more than its 10,000 px result and a band of source
rows. `open_region_reader(path, scale)` gives the same pixels a region at a time (`.size`, `.read(x, y, w, h)`),
for code that should never hold a whole large image; other formats are decoded whole, once, at the scale.
Images over PIL's decompression-bomb limit open like any other (JPEGs reduced in the decoder); only cnnlab's own
cap, --max-pixels, refuses a file, from its header.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tifffile import TiffFile, TiffWriter
from torchvision.transforms.v2.functional import resize

from cnnlab.data.tiff import CHUNK_CACHE_BYTES, ScaledTiff, TiffLayout, UnsupportedTiff, layout_of
from cnnlab.errors import ImageReadError

# File suffixes treated as images when scanning folders (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# 200 megapixels: larger than any phone or DSLR photo, small enough that a forged header
# cannot make us allocate tens of GB. Checked from the header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 200_000_000

# Background that transparent pixels are composited on: neutral grey, so that alpha does not
# turn into black (PIL's default) or white and bias the colour statistics.
ALPHA_BACKGROUND = (128, 128, 128)

# EXIF orientation -> the transpose that makes the image upright (the table of ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,  # stored lying on its left side: turn 90 degrees clockwise
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: the multi-picture JPEG some phones write
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_INT_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

# Short side the data check decodes to: enough to run the whole entropy-coded stream (so truncation
# and corruption are found) at a fraction of the cost of a full decode.
_CHECK_DECODE_SIZE = 64

# Side of the grey thumbnail the data check compares images on (near-duplicates): half the short side it
# decodes to, so an image of 64 px or more reaches it by shrinking at least 2x and the thumbnail hardly depends
# on the file's size or the decoder's path (JPEG DCT scaling or box reduction); 32x32 still holds an object's
# outline and inner edges, in 1 KB per image.
THUMBNAIL_SIZE = _CHECK_DECODE_SIZE // 2

# PIL.Image.MAX_IMAGE_PIXELS is process-wide; this lock makes our brief change of it safe across threads.
_PIL_LIMIT_LOCK = threading.Lock()

# The first four bytes of a TIFF (little-, big-endian) and of a BigTIFF.
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
# PIL mode -> (bits per sample, channels) as stored, for the data check's summary.
_MODE_FACTS = {"1": (1, 1), "L": (8, 1), "P": (8, 1), "LA": (8, 2), "La": (8, 2), "PA": (8, 2), "RGB": (8, 3),
               "YCbCr": (8, 3), "LAB": (8, 3), "HSV": (8, 3), "RGBA": (8, 4), "RGBa": (8, 4), "RGBX": (8, 4),
               "CMYK": (8, 4), "I": (32, 1), "F": (32, 1)}


@dataclass(frozen=True)
class ImageProblem:
    """Something worth reporting about one image file."""

    severity: str  # "error" (cannot be read) or "info" (read, but converted or turned)
    problem: str  # short code, e.g. "truncated-or-corrupt", "unusual-mode", "exif-rotated"
    detail: str  # one human sentence


@dataclass
class ImageInfo:
    """What `inspect_image` found out about one file, header and decode."""

    path: str
    format: str | None = None  # PIL format name: "JPEG", "PNG", "GIF", ...
    width: int = 0  # upright, after EXIF orientation
    height: int = 0
    mode: str | None = None  # PIL mode as stored: "RGB", "CMYK", "I;16", "P", ... (TIFFs: the same names)
    bits: int | None = None  # bits per sample as stored: 1, 8, 12, 16, 32
    channels: int | None = None  # samples per pixel as stored (a palette image: 1), alpha included
    orientation: int = 1  # EXIF orientation tag, 1 = upright
    frames: int = 1
    problems: list[ImageProblem] = field(default_factory=list)
    grey_std: float | None = None  # standard deviation of the grey levels (0..255): ~0 for a blank image
    thumbnail: bytes | None = None  # THUMBNAIL_SIZE^2 grey levels (uint8, row-major): finds near-duplicates

    @property
    def readable(self) -> bool:
        """True if read_image will return pixels for this file."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def megapixels(self) -> float:
        """width * height / 1e6."""
        return self.width * self.height / 1e6

    def to_dict(self) -> dict:
        """Plain JSON-able dict (facts only: the thumbnail's pixels are left out)."""
        return {**asdict(self), "readable": self.readable, "thumbnail": None}


def is_image_file(path: str | os.PathLike) -> bool:
    """True if the file name has an image suffix (the content is not checked)."""
    return os.fsdecode(path).lower().endswith(IMAGE_EXTENSIONS)


def _unreadable(path, problem: str, reason: str) -> ImageReadError:
    """An ImageReadError with a short problem code, for reports."""
    return ImageReadError(path, reason, problem)


def _plain(error: Exception) -> str:
    """An error as a person reads it: an OS error's text without its errno ("input/output error", not "[Errno 5]
    Input/output error: '/x.jpg'"), anything else as it says itself."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error)


def _open(path: Path, max_pixels: int, data: bytes | None = None) -> Image.Image:
    """Open lazily (header only) and enforce the pixel cap before any pixel is decoded; `data`: the file's
    bytes already in memory (`path` then only names it in messages)."""
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise _unreadable(path, "empty-file", "the file is empty (0 bytes)")
        with _PIL_LIMIT_LOCK:
            # PIL's own fixed limit would refuse files the user allowed with --max-pixels, warn on
            # every large satellite image, and say nothing of how to allow a genuine file. It is
            # lifted for the header read only; our cap is checked right below, still before decoding.
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(path if data is None else io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise _unreadable(path, "missing", "no such file") from None
    except PermissionError:
        raise _unreadable(path, "permission-denied", "permission denied; check the file's read permission") from None
    except UnidentifiedImageError:
        raise _unreadable(path, "not-an-image", "not an image file (unknown format)") from None
    except Exception as error:  # noqa: BLE001 - PIL's plugins raise many types on malformed headers
        if isinstance(error, IsADirectoryError):
            raise _unreadable(path, "not-a-file", "a folder, not an image file") from None
        raise _unreadable(path, "truncated-or-corrupt", f"cannot read the header ({_plain(error)})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _over_cap(path, width, height, max_pixels)
    return image


def _over_cap(path, width: int, height: int, max_pixels: int) -> ImageReadError:
    """The one refusal of an image over the pixel cap, from its header."""
    return _unreadable(path, "over-pixel-cap",
                       f"{width}x{height} = {width * height / 1e6:.0f} MP is over the pixel cap of "
                       f"{max_pixels / 1e6:.0f} MP (raise --max-pixels if the file is genuine)")


def _orientation(image: Image.Image, header_only: bool = False) -> int:
    """EXIF orientation 1..8 (1 when absent or unreadable: malformed EXIF must not lose the pixels).

    `header_only`: do not decode to look for it (PIL's PNG reader decodes the whole image to find an
    eXIf chunk placed after the pixel data; writers put it before, where the header read sees it).
    """
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - PIL raises many types on broken EXIF blocks
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _reduction(size: tuple[int, int], min_size: int | None) -> int:
    """Largest integer factor that keeps the short side >= min_size (1 = no reduction)."""
    if not min_size:
        return 1
    return max(1, min(size) // min_size)


def _draft_jpeg(image: Image.Image, min_size: int | None) -> None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale: the smallest whose short side is >= min_size.

    The DCT-domain scaling averages each 8x8 block's frequencies, so the result is close to a full
    decode followed by an area resize, at a fraction of the time and memory.
    """
    factor = _reduction(image.size, min_size)
    scale = next(s for s in (8, 4, 2, 1) if s <= factor)
    if scale > 1:
        width, height = image.size
        # PIL picks the largest power of two <= min(width // w, height // h); asking for
        # (width // scale, height // scale) makes that exactly `scale` on both sides.
        image.draft(None, (width // scale, height // scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB correctly (16-bit scaled, alpha composited on grey)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _INT_GREY_MODES:
        # 16-bit (or 32-bit int) grey: scale the value range to 0..255 instead of clipping,
        # which is what convert("RGB") does and why 16-bit PNGs come out almost white.
        array = np.asarray(image).astype(np.int32)  # (H, W); 65535 * 255 fits in int32
        peak = 65535 if mode.startswith("I;16") or array.max() > 255 else 255
        array = (np.clip(array, 0, peak) * 255 + peak // 2) // peak  # rounded: 32768 -> 128
        return Image.fromarray(array.astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        array = (array - low) / (high - low or 1.0) * 255.0
        return Image.fromarray(np.nan_to_num(array).astype(np.uint8), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _decode(image: Image.Image, path: Path, min_size: int | None) -> Image.Image:
    """Decode an opened image to upright 8-bit RGB; short side >= min_size when that was asked for."""
    try:
        if image.format in _JPEG_FORMATS:
            _draft_jpeg(image, min_size)
        image.load()  # multi-frame files (GIF, TIFF, APNG): the first frame, where open() left us
    except MemoryError:
        raise _unreadable(path, "out-of-memory", "not enough memory to decode it") from None
    except Image.DecompressionBombError as error:
        raise _unreadable(path, "over-pixel-cap", f"a frame is over PIL's size limit ({error})") from None
    except Exception as error:  # noqa: BLE001 - OSError mostly; plugins also raise Index/Key/TypeError
        raise _unreadable(path, "truncated-or-corrupt", f"corrupt or truncated ({_plain(error)})") from None
    orientation = _orientation(image)
    try:
        rgb = _to_rgb(image)
    except (ValueError, OSError) as error:
        raise _unreadable(path, "unsupported-mode", f"cannot convert mode {image.mode} to RGB ({error})") from None
    # Integer box reduction for every format (JPEGs are already within 2x of min_size after the draft),
    # so what leaves here is never kept at full resolution when a smaller size was asked for.
    factor = _reduction(rgb.size, min_size)
    if factor > 1:
        rgb = rgb.reduce(factor)
    if orientation in _ORIENTATION_TRANSPOSE:  # after reducing: turning a small image is cheaper
        rgb = rgb.transpose(_ORIENTATION_TRANSPOSE[orientation])
    return rgb


# --------------------------------------------------------------------------------------------
# TIFF: tifffile, region by region
# --------------------------------------------------------------------------------------------

def _is_tiff(path: Path, data: bytes | None) -> bool:
    """True when the file starts like a TIFF or BigTIFF (a file that cannot be read goes to PIL's errors)."""
    if data is not None:
        return data[:4] in _TIFF_MAGIC
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _open_tiff(path: Path, max_pixels: int, data: bytes | None = None) -> tuple[TiffFile, TiffLayout]:
    """Open a TIFF (header only), check that its layout is one cnnlab reads and enforce the pixel cap."""
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise _unreadable(path, "empty-file", "the file is empty (0 bytes)")
    try:
        tif = TiffFile(io.BytesIO(data) if data is not None else path)
    except Exception as error:  # noqa: BLE001 - tifffile raises several types on malformed headers
        raise _unreadable(path, "truncated-or-corrupt", f"cannot read the TIFF header ({_plain(error)})") from None
    try:
        layout = layout_of(tif)
    except UnsupportedTiff as error:
        tif.close()
        raise _unreadable(path, "unsupported-tiff", f"unsupported TIFF: {error}; save it as an 8- or 16-bit "
                          "grey or RGB TIFF (or PNG) to use it") from None
    except Exception as error:  # noqa: BLE001 - a broken IFD chain, tag or pyramid
        tif.close()
        raise _unreadable(path, "truncated-or-corrupt", f"cannot read the TIFF header ({_plain(error)})") from None
    if layout.width * layout.height > max_pixels:
        tif.close()
        raise _over_cap(path, layout.width, layout.height, max_pixels)
    return tif, layout


def _upright(layout: TiffLayout) -> tuple[int, int]:
    """(width, height) of a TIFF's first image after its orientation tag."""
    turned = layout.orientation in (5, 6, 7, 8)
    return (layout.height, layout.width) if turned else (layout.width, layout.height)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of an image at a pixel scale: round(W x scale) x round(H x scale), at least 1 x 1."""
    return max(1, round(width * scale)), max(1, round(height * scale))


class _Decoded:
    """A whole decoded image, read a region at a time (formats without random access)."""

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels  # uint8 (3, H, W)

    def read(self, x: int, y: int, w: int, h: int) -> torch.Tensor:
        return self.pixels[:, y:y + h, x:x + w].clone()


class RegionReader:
    """An image at one pixel scale, read a region at a time: `size` is (width, height) at the scale, and
    read(x, y, w, h) the uint8 RGB (3, h, w) of a region, the very pixels read_image(path, scale=...) holds there.

    TIFFs decode only the tiles or strips under each region, from the pyramid level nearest above the scale
    (memory: the region and a band of source rows); other formats are decoded whole, once, at the scale (JPEGs
    reduced in the decoder). Close it, or use it in a `with` block, to release the file.
    """

    def __init__(self, path: Path, size: tuple[int, int], source, close=None):
        self.path = path
        self.size = size
        self._source = source  # ScaledTiff or _Decoded: read(x, y, w, h) -> uint8 (3, h, w)
        self._close = close

    def read(self, x: int, y: int, w: int, h: int) -> torch.Tensor:
        """uint8 (3, h, w): the region whose top-left corner is (x, y), at the reader's scale."""
        width, height = self.size
        if not (0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height):
            raise ValueError(f"region x={x} y={y} w={w} h={h} is not inside the {width}x{height} image")
        try:
            return self._source.read(x, y, w, h)
        except MemoryError:
            raise _unreadable(self.path, "out-of-memory", "not enough memory to decode it") from None
        except Exception as error:  # noqa: BLE001 - codecs raise many types on corrupt tiles
            raise _unreadable(self.path, "truncated-or-corrupt", f"corrupt or truncated ({_plain(error)})") from None

    def close(self) -> None:
        """Release the file (a TIFF reader keeps it open between reads)."""
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "RegionReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tiff_reader(path: Path, tif: TiffFile, layout: TiffLayout, size: tuple[int, int]) -> RegionReader:
    """A RegionReader of an open TIFF at `size` (upright); it owns the file (closed here on failure)."""
    try:
        source = ScaledTiff(tif, layout, size, ALPHA_BACKGROUND)  # 16-bit and float: reads the smallest level once
    except BaseException as error:
        tif.close()
        if isinstance(error, MemoryError):
            raise _unreadable(path, "out-of-memory", "not enough memory to decode it") from None
        if isinstance(error, Exception):  # not KeyboardInterrupt or SystemExit
            raise _unreadable(path, "truncated-or-corrupt", f"corrupt or truncated ({_plain(error)})") from None
        raise
    return RegionReader(path, size, source, tif.close)


def _reduced_size(width: int, height: int, min_size: int | None) -> tuple[int, int]:
    """(width, height) after read_pil's reduction: PIL's reduce(factor) rounds up."""
    factor = _reduction((width, height), min_size)
    return -(-width // factor), -(-height // factor)


def _read_tiff(path: Path, max_pixels: int, data: bytes | None, min_size: int | None = None,
               scale: float | None = None) -> torch.Tensor:
    """A whole TIFF as uint8 (3, H, W): at `scale`, or reduced as read_pil reduces (short side >= min_size)."""
    tif, layout = _open_tiff(path, max_pixels, data)
    width, height = _upright(layout)
    size = scaled_size(width, height, scale) if scale is not None else _reduced_size(width, height, min_size)
    with _tiff_reader(path, tif, layout, size) as reader:
        return reader.read(0, 0, *size)


def open_region_reader(path: str | os.PathLike, scale: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                       data: bytes | None = None) -> RegionReader:
    """The image at pixel `scale`, to be read a region at a time (see RegionReader); the pixel cap is checked
    from the header first. `data`: the file's bytes in memory (`path` then only names it)."""
    if not scale > 0:
        raise ValueError(f"scale={scale}: must be above 0")
    path = Path(path)
    if _is_tiff(path, data):
        tif, layout = _open_tiff(path, max_pixels, data)
        return _tiff_reader(path, tif, layout, scaled_size(*_upright(layout), scale))
    pixels = read_image(path, max_pixels=max_pixels, scale=scale, data=data)
    return RegionReader(path, (pixels.shape[2], pixels.shape[1]), _Decoded(pixels))


def read_pil(path: str | os.PathLike, min_size: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """Decode an image file to an 8-bit RGB PIL image, upright (EXIF applied).

    With `min_size`, the image is reduced by the largest integer factor that keeps its short side
    >= min_size (JPEGs already in the decoder, by DCT-domain scaling 1/2, 1/4, 1/8): the same pixels
    a full decode + resize would give, at a fraction of the time and memory for large photos.
    `data`: the file's bytes in memory instead of reading `path` (which then only names it). TIFFs are read
    with tifffile, reduced to the same size by the antialiased resize.
    """
    path = Path(path)
    if _is_tiff(path, data):
        return Image.fromarray(_read_tiff(path, max_pixels, data, min_size=min_size).permute(1, 2, 0).numpy())
    image = _open(path, max_pixels, data)
    with image:  # closes the file handle, which load() leaves open for multi-frame files
        rgb = _decode(image, path, min_size)
    if rgb is not image:
        image.close()  # free the full-resolution pixels now, not at garbage collection
    return rgb


def read_image(path: str | os.PathLike, min_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, scale: float | None = None,
               data: bytes | None = None) -> torch.Tensor:
    """Decode an image file to a uint8 tensor of shape (3, H, W), upright, RGB.

    `scale` (tiled runs): the image at that pixel scale, exactly round(W x scale) x round(H x scale): the
    decoder reduces a JPEG in the DCT domain to the smallest of 1/2, 1/4, 1/8 that is still at least that
    big, and an antialiased resize does the rest, so a 100-megapixel photo wanted at scale 0.25 is never
    decoded at full size; a TIFF is read region by region at that size (module doc). `data`: the file's bytes
    in memory (an upload); `path` then only names it.
    """
    if _is_tiff(Path(path), data):
        return _read_tiff(Path(path), max_pixels, data, min_size=min_size, scale=scale)
    if scale is not None and scale != 1.0:
        width, height = image_size(path, max_pixels, data)  # header only; the pixel cap is checked here too
        target = scaled_size(width, height, scale)[::-1]  # (H, W)
        image = read_pil(path, min_size=max(1, math.ceil(min(target))), max_pixels=max_pixels, data=data)
        pixels = _chw(np.asarray(image))
        if tuple(pixels.shape[1:]) != target:
            pixels = resize(pixels, list(target), antialias=True)
        return pixels
    image = read_pil(path, min_size=min_size, max_pixels=max_pixels, data=data)
    array = np.asarray(image)  # (H, W, 3), read-only, over PIL's bytes
    return _chw(array)


def _chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) pixels PIL owns -> a writable (3, H, W) tensor of its own. The transpose is copied into place, except
    where it is already contiguous (an image one pixel wide or tall), when the read-only view is copied."""
    chw = np.ascontiguousarray(array.transpose(2, 0, 1))
    return torch.from_numpy(chw if chw.flags.writeable else chw.copy())


def read_at(path: str | os.PathLike, resolution: int | float, max_pixels: int = DEFAULT_MAX_PIXELS,
            data: bytes | None = None) -> torch.Tensor:
    """The image as every reader of a run receives it, before its per-image transform: uint8 (3, H, W), upright.

    `resolution` an int: the short side exactly that many pixels (an image already smaller is kept as it is);
    a float: the whole image at that pixel scale (tiled runs). The decode cache stores this very tensor, and
    prediction, evaluation, export checks and serve read files through it, so an image gives the same pixels
    whether it comes from the cache or the file, from a folder or an upload.
    """
    if isinstance(resolution, float):
        return read_image(path, max_pixels=max_pixels, scale=resolution, data=data)
    image = read_image(path, min_size=resolution, max_pixels=max_pixels, data=data)  # short side in [r, 2r)
    if min(image.shape[1:]) > resolution:
        image = resize(image, [resolution], antialias=True)  # torchvision's v2.Resize(resolution), the same call
    return image


def image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               data: bytes | None = None) -> tuple[int, int]:
    """(width, height) from the header only, after EXIF orientation."""
    width, height, _ = image_header(path, max_pixels, data)
    return width, height


def image_header(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                 data: bytes | None = None) -> tuple[int, int, str]:
    """(width, height, format) from the header only (nothing decoded), width and height after EXIF orientation;
    `data`: the file's bytes in memory."""
    if _is_tiff(Path(path), data):
        tif, layout = _open_tiff(Path(path), max_pixels, data)
        tif.close()
        return (*_upright(layout), "TIFF")
    with _open(Path(path), max_pixels, data) as image:
        width, height = image.size
        orientation = _orientation(image, header_only=True)
        kind = image.format or "unknown"
    return (height, width, kind) if orientation in (5, 6, 7, 8) else (width, height, kind)


def _mode_problem(image: Image.Image) -> ImageProblem | None:
    """The conversion read_pil will apply to this mode, as an info-level problem (None for plain RGB)."""
    mode = image.mode
    args = image.tile[0].args if image.tile else None  # the raw mode: "RGB;16B" (PNG), ("RGB;16B", ...) (TIFF)
    rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
    if mode in ("RGB", "RGBA", "LA") and isinstance(rawmode, str) and ";16" in rawmode:
        note = f"16 bits per channel ({mode}): the high byte is used"
        if mode != "RGB":
            note += f"; transparent pixels composited on grey {ALPHA_BACKGROUND}"
        return ImageProblem("info", "unusual-mode", note)
    notes = {
        "CMYK": "CMYK: converted to RGB without colour management (colours may shift)",
        "P": "palette (P): converted to RGB",
        "1": "1-bit black and white: copied to 3 channels",
        "L": "grayscale (L): copied to 3 channels",
        "F": "32-bit float: scaled from its own min..max to 0..255",
        "YCbCr": "YCbCr: converted to RGB",
    }
    if mode in _INT_GREY_MODES:
        return ImageProblem("info", "unusual-mode", f"16-bit grayscale ({mode}): scaled to 8 bits "
                            "(value * 255 / 65535), then copied to 3 channels")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return ImageProblem("info", "unusual-mode", f"{mode} with an alpha channel: transparent pixels "
                            f"are composited on grey {ALPHA_BACKGROUND}")
    if mode in notes:
        return ImageProblem("info", "unusual-mode", notes[mode])
    if mode != "RGB":
        return ImageProblem("info", "unusual-mode", f"{mode}: converted to RGB")
    return None


def _pil_depth(image: Image.Image) -> tuple[int | None, int | None]:
    """(bits per sample, channels) of an opened PIL image as stored."""
    if image.mode in _INT_GREY_MODES:
        return (16 if image.mode.startswith("I;16") else 32), 1
    bits, channels = _MODE_FACTS.get(image.mode, (None, None))
    args = image.tile[0].args if image.tile else None  # the raw mode: "RGB;16B" (PNG), ("RGB;16B", ...) (TIFF)
    rawmode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
    return (16 if isinstance(rawmode, str) and ";16" in rawmode else bits), channels


def _tiff_problems(layout: TiffLayout, reader: RegionReader | None) -> list[ImageProblem]:
    """The conversion a TIFF's samples go through (info), and a layout that cannot be read region by region."""
    notes = []
    if layout.colour == "palette":
        notes.append("palette colours converted to RGB")
    elif layout.colour == "cmyk":
        notes.append("CMYK converted to RGB without colour management (colours may shift)")
    elif layout.colour == "grey":
        notes.append(("inverted (min-is-white), " if layout.invert else "") + "copied to 3 channels")
    if layout.kind == "f":
        notes.append("scaled from its own min..max to 0..255")
    elif layout.kind == "u" and layout.bits != 8 and layout.colour != "palette":
        high = reader._source.conversion.high if reader is not None else None  # noqa: SLF001 - this module's reader
        notes.append(f"scaled to 8 bits: value * 255 / {high:.0f}" if high is not None else
                     "scaled to 8 bits by the file's range")
    if layout.alpha:
        notes.append(f"transparent pixels composited on grey {ALPHA_BACKGROUND}")
    elif layout.colour == "rgb" and layout.channels == 4:
        notes.append("the 4th channel (not marked as alpha) is ignored")
    label = "1-bit black and white" if layout.kind == "b" else f"{layout.bits}-bit {layout.mode}"
    problems = [ImageProblem("info", "unusual-mode", f"{label} TIFF: " + "; ".join(notes))] if notes else []
    strip_bytes = layout.strip_rows * layout.width * layout.channels * max(1, layout.bits // 8)
    if not layout.tiled and layout.compression != "none" and strip_bytes > CHUNK_CACHE_BYTES:
        problems.append(ImageProblem("info", "tiff-strips", f"compressed strips of {layout.strip_rows} rows "
                                     f"({strip_bytes / 1e6:.0f} MB each) are decoded whole for any region; "
                                     "saved tiled (e.g. 256 px tiles), large images read faster and in less memory"))
    return problems


def _inspect_tiff(path: Path, max_pixels: int, decode: bool, info: ImageInfo) -> list[ImageProblem]:
    """Fill `info` from a TIFF's header (and a small decode); returns its info-level problems."""
    tif, layout = _open_tiff(path, max_pixels)
    info.format, info.mode, info.bits, info.channels = "TIFF", layout.mode, layout.bits, layout.channels
    info.orientation, info.frames = layout.orientation, layout.frames
    info.width, info.height = _upright(layout)
    reader = None
    if not decode:
        tif.close()
    else:
        with _tiff_reader(path, tif, layout, _reduced_size(info.width, info.height, _CHECK_DECODE_SIZE)) as reader:
            pixels = reader.read(0, 0, *reader.size)
        info.grey_std, info.thumbnail = _fingerprint(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
    return _tiff_problems(layout, reader)


def _inspect_pil(path: Path, max_pixels: int, decode: bool, info: ImageInfo) -> list[ImageProblem]:
    """Fill `info` from a file PIL reads (and a small decode); returns its info-level problems."""
    with _open(path, max_pixels) as image:
        info.format, info.mode = image.format, image.mode
        info.bits, info.channels = _pil_depth(image)
        width, height = image.size  # as stored; the JPEG draft below shrinks image.size
        mode_problem = _mode_problem(image)  # before decoding: it reads the raw mode of the tile
        if decode:
            info.grey_std, info.thumbnail = _fingerprint(_decode(image, path, _CHECK_DECODE_SIZE))
        info.orientation = _orientation(image, header_only=not decode)
        info.width, info.height = (height, width) if info.orientation in (5, 6, 7, 8) else (width, height)
        try:
            # Counted after the first frame is decoded: GIF counts by walking the file.
            info.frames = int(getattr(image, "n_frames", 1))
        except Exception:  # noqa: BLE001 - a broken later frame does not matter: only the first is read
            info.frames = 1
    return [mode_problem] if mode_problem is not None else []


def inspect_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                  decode: bool = True) -> ImageInfo:
    """Header facts and problems of one file; never raises for a bad image (its problem says why).

    With `decode`, the pixels are decoded through the same code path as read_image (at a small
    size: the whole compressed stream is still read; a TIFF's smallest pyramid level above that size), so
    truncated and corrupt files are found.
    """
    path = Path(path)
    info = ImageInfo(path=os.fsdecode(path))
    inspect = _inspect_tiff if _is_tiff(path, None) else _inspect_pil
    try:
        problems = inspect(path, max_pixels, decode, info)
    except ImageReadError as error:
        info.problems.append(ImageProblem("error", error.problem, error.reason))
        return info
    info.problems += problems
    if info.orientation != 1:
        stored = (info.height, info.width) if info.orientation in (5, 6, 7, 8) else (info.width, info.height)
        info.problems.append(ImageProblem(
            "info", "exif-rotated", f"EXIF orientation {info.orientation}: turned upright when read "
            f"(stored as {stored[0]}x{stored[1]}, used as {info.width}x{info.height})"))
    if info.frames > 1:
        info.problems.append(ImageProblem("info", "multi-frame",
                                          f"{info.frames} frames: only the first is used"))
    return info


def _fingerprint(rgb: Image.Image) -> tuple[float, bytes]:
    """(grey-level standard deviation, THUMBNAIL_SIZE^2 grey thumbnail) of a decoded image."""
    grey = rgb.convert("L")
    # Lanczos, not a box average: a box filter aliases fine texture differently from each source size, so a
    # photo and its half-size copy would differ in their edges; Lanczos's low-pass keeps them alike.
    thumbnail = grey.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS).tobytes()
    return float(np.asarray(grey, dtype=np.float32).std()), thumbnail


def encode_png(array: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as PNG bytes, in memory (the web app's overlays)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_image(array: np.ndarray | torch.Tensor, path: str | os.PathLike, quality: int = 90) -> None:
    """Write an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor as JPEG or PNG (by suffix)."""
    if isinstance(array, torch.Tensor):
        array = array.permute(1, 2, 0).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # Fixed encoder settings so the same pixels always give the same bytes.
        image.save(path, format="JPEG", quality=quality, optimize=False, subsampling=2)
    else:
        image.save(path)


def save_tiled_tiff(path: str | os.PathLike, levels: list[tuple[tuple[int, int], Iterable[np.ndarray]]],
                    tile: int = 256, quality: int = 90) -> None:
    """Write an RGB image as a tiled, JPEG-compressed TIFF, one tile at a time: `levels` are ((width, height),
    tiles) of the image and then of its reduced-resolution pyramid levels (stored as SubIFDs), each level's
    tiles (tile, tile, 3) uint8 row by row (smaller at the right and bottom edges). BigTIFF when the pixels
    pass 2 GB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = sum(3 * width * height for (width, height), _ in levels)
    # YCbCr with 4:2:0 chroma and a fixed quality, as save_image writes JPEGs: the same pixels, the same bytes
    # (tifffile turns RGB into YCbCr for JPEG; photometric "ycbcr" would take the samples as YCbCr already)
    options = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", subsampling=(2, 2),
                   compression="jpeg", compressionargs={"level": quality}, metadata=None)
    with TiffWriter(path, bigtiff=pixels > 2**31) as writer:
        for level, ((width, height), tiles) in enumerate(levels):
            extra = {"subifds": len(levels) - 1} if level == 0 else {"subfiletype": 1}
            writer.write(iter(tiles), shape=(height, width, 3), **options, **extra)
