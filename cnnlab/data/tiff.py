"""TIFF and BigTIFF, read region by region at a scale: what slides, satellite scenes and microscope scans come in.

cnnlab.data.images opens the file (tifffile) and hands the open TiffFile here; nothing here opens a path. The
first image of the file (the first page of tifffile's first series; later pages and series are not read) is
read as the uint8 RGB that every other format gives:

    layout_of      the header: size, samples, bit depth, photometric, pyramid levels; an unsupported layout
                   raises UnsupportedTiff with what it is and what is read
    ScaledTiff     the image at a target size: each region decodes only the tiles or strips under it, from the
                   pyramid level nearest above the size, converts them to RGB and resizes them with the
                   seamless antialiased resize (cnnlab.data.resample), a band of rows at a time, so memory
                   follows the output, not the 20,000 px original

Read: unsigned 1- to 16-bit and floating-point samples; grey (min-is-black or min-is-white), palette, RGB (also
JPEG-compressed YCbCr), CMYK; one extra channel as alpha (or ignored, when not marked as alpha, after RGB);
tiled or striped, chunky or planar, any compression imagecodecs decodes, pyramids (SubIFDs or reduced pages).
Not read (UnsupportedTiff): signed integers, complex numbers, 2 channels that are not grey + alpha, more than 4
channels, CIELab and other colour models, volumes.

The conversion to 8 bits, the same for every read of a file (training, prediction, the data check):
  8-bit                       as stored
  1..7, 12, 14-bit (declared) value * 255 / (2^bits - 1)
  16-bit                      value * 255 / P, P = 2^k - 1 for the smallest k >= 8 with P >= the image's largest
                              value: 12-bit camera data stored in 16 bits (largest value <= 4095) gets 4095
                              rather than 65535, which would make it 16 times too dark. Per file, never clipped:
                              a dim 12-bit image whose largest value is 1,000 gets 1023, four times brighter
                              than its camera's range would make it (a per-image percentile stretch, the other
                              common rule, would also erase how bright it is, and clip)
  float                       from the image's own min..max to 0..255 (as cnnlab reads 32-bit float PNGs)
The largest value (or the min..max) is taken over the file's smallest pyramid level (its only level when it has
no pyramid): one pass, deterministic per file. Alpha is composited on cnnlab's grey (ALPHA_BACKGROUND), as for
PNGs; palette colours (16-bit in TIFF) are scaled by 255 / 65535.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from tifffile import COMPRESSION, TIFF, TiffFile

from cnnlab.data.resample import output_band, resample, source_span, taps

# Decoded tiles and strips kept for the next region (least recently used out first): two rows of chunks across
# the image, since consecutive bands of rows share the chunk row between them, which is then decoded once; and
# at least this many bytes, for regions read out of order (64 tiles of 256 px RGB).
CHUNK_CACHE_BYTES = 12 << 20
# Source rows converted and resized at once, in float32 bytes: a band of a 20,000 px wide RGB image is then
# ~70 rows (16 MB), whatever the image's height.
BAND_BYTES = 16 << 20
# A tile or strip larger than this and larger than the whole image is a forged header (a 100x100 image
# claiming 60,000 px tiles would allocate gigabytes for one tile).
MAX_CHUNK_PIXELS = 1 << 22
_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}
_ALPHA_EXTRASAMPLES = {1, 2}  # 1 associated (premultiplied) alpha, 2 unassociated alpha; 0 unspecified
# EXIF/TIFF orientation -> (flip rows, flip columns, then transpose) that makes the stored image upright
_ORIENTATION = {1: (False, False, False), 2: (False, True, False), 3: (True, True, False),
                4: (True, False, False), 5: (False, False, True), 6: (True, False, True),
                7: (True, True, True), 8: (False, True, True)}


class UnsupportedTiff(ValueError):
    """A TIFF whose layout or sample format cnnlab does not read; the message says what it is."""


@dataclass(frozen=True)
class TiffLayout:
    """What the header of a TIFF's first image says (level 0, as stored)."""

    width: int
    height: int
    bits: int  # bits per sample: 1, 8, 12, 16, 32, ...
    kind: str  # numpy dtype kind of the decoded samples: "u" unsigned, "b" 1-bit, "f" float
    channels: int  # samples per pixel, extra samples included
    colour: str  # "grey", "rgb", "palette" or "cmyk"
    alpha: int  # 0 none, 1 associated, 2 unassociated (the channel after the colour ones)
    invert: bool  # min-is-white grey
    tiled: bool
    strip_rows: int  # rows per strip (striped files; 0 when tiled)
    compression: str
    bigtiff: bool
    levels: tuple[tuple[int, int], ...]  # (width, height) of every pyramid level, level 0 first
    orientation: int  # TIFF orientation tag, 1 = upright
    frames: int  # images in the file (pages of the first series, plus other series); only the first is read

    @property
    def mode(self) -> str:
        """A PIL-style mode name: L, I;16, F, 1, LA, RGB, RGB;16, RGBA, P, CMYK."""
        if self.colour in ("palette", "cmyk"):
            return "P" if self.colour == "palette" else "CMYK"
        base = {"grey": "L", "rgb": "RGB"}[self.colour] + ("A" if self.alpha else "")
        if self.kind == "b":
            return "1"
        if self.kind == "f":
            return "F" if base == "L" else base + ";F"
        if self.bits > 8:
            return "I;16" if base == "L" else f"{base};16"
        return base


def layout_of(tif: TiffFile) -> TiffLayout:
    """The layout of the file's first image; UnsupportedTiff when cnnlab cannot read it as RGB."""
    if not tif.series or not tif.series[0].levels:
        raise UnsupportedTiff("the file holds no image")
    series = tif.series[0]
    key = _keyframe(series.levels[0])
    dtype = key.dtype
    if dtype is None or key.sampleformat not in (1, 3) or dtype.kind not in "ubf" or \
            (dtype.kind == "u" and dtype.itemsize > 2):
        sampleformat = {1: "unsigned", 2: "signed", 3: "float", 5: "complex integer", 6: "complex float"}
        raise UnsupportedTiff(f"{key.bitspersample}-bit {sampleformat.get(key.sampleformat, 'other')} samples "
                              "(read: 1- to 16-bit unsigned, or float)")
    if key.imagedepth > 1:
        raise UnsupportedTiff(f"a volume of depth {key.imagedepth} (read: 2-D images)")
    if key.compression != 1 and key.compression not in TIFF.DECOMPRESSORS:
        raise UnsupportedTiff(f"compression {_name(key.compression)} has no decoder here")
    colour, alpha, invert = _colour(key)
    levels = tuple((_keyframe(level).imagewidth, _keyframe(level).imagelength) for level in series.levels)
    chunk = key.tilewidth * key.tilelength if key.is_tiled else key.imagewidth * min(key.rowsperstrip or 1 << 31,
                                                                                     key.imagelength)
    if chunk > max(MAX_CHUNK_PIXELS, key.imagewidth * key.imagelength):
        raise UnsupportedTiff(f"a {key.tilewidth}x{key.tilelength} tile in a {key.imagewidth}x{key.imagelength} "
                              "image (a corrupt or forged header)")
    frames = len(series.levels[0].pages) + len(tif.series) - 1
    orientation = key.tags.valueof(274, 1)
    return TiffLayout(width=key.imagewidth, height=key.imagelength, bits=key.bitspersample, kind=dtype.kind,
                      channels=key.samplesperpixel, colour=colour, alpha=alpha, invert=invert, tiled=key.is_tiled,
                      strip_rows=0 if key.is_tiled else min(key.rowsperstrip or key.imagelength, key.imagelength),
                      compression=_name(key.compression).lower(), bigtiff=tif.is_bigtiff, levels=levels,
                      orientation=orientation if orientation in _ORIENTATION else 1, frames=frames)


def _name(compression: int) -> str:
    try:
        return COMPRESSION(compression).name
    except ValueError:
        return str(compression)


def _keyframe(level):
    """The first page of a pyramid level (tifffile series), with its tags."""
    page = level.pages[0] if len(level.pages) else None
    if page is None:
        raise UnsupportedTiff("the first image has no pages")
    return page.keyframe


def _colour(key) -> tuple[str, int, bool]:
    """(colour, alpha, invert) from the photometric interpretation and the samples; UnsupportedTiff otherwise."""
    photometric, samples = int(key.photometric), key.samplesperpixel
    extras = tuple(int(e) for e in key.extrasamples)
    alpha = extras[0] if extras and extras[0] in _ALPHA_EXTRASAMPLES else 0
    if photometric == 3 and samples == 1 and key.colormap is not None:
        return "palette", 0, False
    if photometric == 5 and samples == 4 and not extras and key.tags.valueof(332, 1) == 1:  # inkset 1: CMYK
        return "cmyk", 0, False
    if photometric in (0, 1) and (samples == 1 or (samples == 2 and alpha)):  # min-is-white, min-is-black
        return "grey", alpha, photometric == 0
    # RGB; YCbCr only JPEG-compressed (the codec gives RGB); three grey channels are shown as R, G, B
    if photometric in (0, 1, 2) or (photometric == 6 and key.compression in _JPEG_COMPRESSIONS):
        # a fourth channel not marked as alpha (RGBX, padding) is ignored, as PIL does
        if samples == 3 or (samples == 4 and len(extras) <= 1):
            return "rgb", alpha, False
    described = {0: "grey (min-is-white)", 1: "grey", 2: "RGB", 3: "palette", 4: "mask", 5: "separated (CMYK)",
                 6: "YCbCr", 8: "CIELab", 32844: "LogL", 32845: "LogLuv", 34892: "linear raw"}
    raise UnsupportedTiff(f"{samples} channel(s) of photometric {described.get(photometric, photometric)}"
                          f"{', extra samples ' + str(list(extras)) if extras else ''} (read: 1 grey, "
                          "2 grey + alpha, 3 RGB or 4 RGB + alpha channels, palette, CMYK)")


# --------------------------------------------------------------------------------------------
# one pyramid level: raw samples of a region, decoding only the chunks (tiles or strips) under it
# --------------------------------------------------------------------------------------------

class Level:
    """The stored samples of one pyramid level, read a rectangle at a time: (h, w, channels), decoded dtype."""

    def __init__(self, tif: TiffFile, level):
        self.tif = tif
        self.page = level.pages[0]
        self.key = key = self.page.keyframe
        self.width, self.height, self.samples = key.imagewidth, key.imagelength, key.samplesperpixel
        self.planes = self.samples if key.planarconfig == 2 else 1  # planar: one chunk per sample
        self.contig = self.samples // self.planes
        if key.is_tiled:
            self.chunk_h, self.chunk_w = key.tilelength, key.tilewidth
        else:
            self.chunk_h, self.chunk_w = min(key.rowsperstrip or key.imagelength, key.imagelength), key.imagewidth
        self.rows, self.cols = math.ceil(self.height / self.chunk_h), math.ceil(self.width / self.chunk_w)
        self.dtype = key.dtype
        # Uncompressed strips are read row by row straight from the file: a one-strip image of 20,000 rows
        # (ImageJ writes those) would otherwise be decoded whole to read ten rows of it.
        self.direct = (not key.is_tiled and key.compression == 1 and key.predictor == 1 and key.fillorder == 1
                       and key.bitspersample == 8 * self.dtype.itemsize and self.dtype.kind != "b")
        row_bytes = self.chunk_h * self.width * self.samples * self.dtype.itemsize
        self.cache_bytes = max(CHUNK_CACHE_BYTES, 2 * row_bytes)
        self._chunks: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._held = 0
        end = max((o + n for o, n in zip(self.page.dataoffsets, self.page.databytecounts)), default=0)
        if end > tif.filehandle.size:
            raise ValueError(f"the image data ends {end - tif.filehandle.size} bytes past the end of the file "
                             "(truncated)")
        if len(self.page.dataoffsets) < self.rows * self.cols * self.planes:
            raise ValueError("fewer tiles or strips than the image needs (corrupt)")

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Samples of rows y0..y1-1, columns x0..x1-1: (y1 - y0, x1 - x0, channels)."""
        out = np.zeros((y1 - y0, x1 - x0, self.samples), dtype=self.dtype)
        for plane in range(self.planes):
            channels = slice(plane * self.contig, (plane + 1) * self.contig)
            if self.direct:
                self._read_rows(out[:, :, channels], plane, x0, y0, x1, y1)
                continue
            for row in range(y0 // self.chunk_h, (y1 - 1) // self.chunk_h + 1):
                for col in range(x0 // self.chunk_w, (x1 - 1) // self.chunk_w + 1):
                    chunk = self._chunk((plane * self.rows + row) * self.cols + col)
                    if chunk is None:  # an empty tile: zeros (tifffile's no-data value)
                        continue
                    top, left = row * self.chunk_h, col * self.chunk_w
                    # the part of the chunk inside both the region and the image (edge chunks may be padded)
                    r0, r1 = max(y0, top), min(y1, top + chunk.shape[0], self.height)
                    c0, c1 = max(x0, left), min(x1, left + chunk.shape[1], self.width)
                    if r1 > r0 and c1 > c0:
                        out[r0 - y0:r1 - y0, c0 - x0:c1 - x0, channels] = chunk[r0 - top:r1 - top, c0 - left:c1 - left]
        return out

    def _chunk(self, index: int) -> np.ndarray | None:
        """Decoded chunk (h, w, contig) from the cache or the file; None for an empty one."""
        if index in self._chunks:
            self._chunks.move_to_end(index)
            return self._chunks[index]
        offset, count = self.page.dataoffsets[index], self.page.databytecounts[index]
        data = None
        if offset and count:
            handle = self.tif.filehandle
            handle.seek(offset)
            data = handle.read(count)
        arguments = {}
        if self.key.compression in _JPEG_COMPRESSIONS:
            arguments = {"jpegtables": self.page.jpegtables, "jpegheader": self.key.jpegheader}
        segment = self.key.decode(data, index, **arguments)[0]  # (1, h, w, contig) or None
        chunk = None if segment is None else segment[0]
        self._chunks[index] = chunk
        self._held += 0 if chunk is None else chunk.nbytes
        while self._held > self.cache_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self._held -= 0 if old is None else old.nbytes
        return chunk

    def _read_rows(self, out: np.ndarray, plane: int, x0: int, y0: int, x1: int, y1: int) -> None:
        """Rows of uncompressed strips, read from the file without decoding whole strips."""
        stored = np.dtype(self.tif.byteorder + self.dtype.char)
        row_bytes = self.width * self.contig * stored.itemsize
        handle = self.tif.filehandle
        for strip in range(y0 // self.chunk_h, (y1 - 1) // self.chunk_h + 1):
            top = strip * self.chunk_h
            r0, r1 = max(y0, top), min(y1, top + self.chunk_h)
            handle.seek(self.page.dataoffsets[plane * self.rows + strip] + (r0 - top) * row_bytes)
            data = handle.read((r1 - r0) * row_bytes)
            if len(data) < (r1 - r0) * row_bytes:
                raise ValueError("the image data stops early (truncated)")
            rows = np.frombuffer(data, dtype=stored).reshape(r1 - r0, self.width, self.contig)
            out[r0 - y0:r1 - y0] = rows[:, x0:x1]


# --------------------------------------------------------------------------------------------
# samples -> RGB
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conversion:
    """How one file's samples become 0..255 RGB: the same for every region of every read."""

    layout: TiffLayout
    low: float  # value that becomes 0
    high: float  # value that becomes 255
    colormap: np.ndarray | None  # palette: (entries, 3) float32 0..255
    background: tuple[int, int, int]  # what transparent pixels show (cnnlab.data.images.ALPHA_BACKGROUND)

    def rgb(self, samples: np.ndarray) -> np.ndarray:
        """(h, w, channels) decoded samples -> (h, w, 3) RGB in 0..255: float32, or the samples themselves when
        they are 8-bit RGB already."""
        layout = self.layout
        if layout.colour == "rgb" and samples.dtype == np.uint8 and samples.shape[2] == 3 and not layout.alpha:
            return samples
        if layout.colour == "palette":
            return self.colormap[samples[..., 0]]
        colours = 4 if layout.colour == "cmyk" else 3 if layout.colour == "rgb" else 1
        values = samples.astype(np.float32)                                          # (h, w, C)
        colour = values[..., :colours]
        if (self.low, self.high) != (0.0, 255.0):
            colour = (colour - self.low) * np.float32(255.0 / (self.high - self.low or 1.0))
            colour = np.clip(np.nan_to_num(colour), 0, 255)
        if layout.invert:
            colour = 255 - colour
        if layout.colour == "cmyk":  # PIL's conversion: no colour management
            colour = (255 - colour[..., :3]) * (255 - colour[..., 3:]) / np.float32(255)
        elif colours == 1:
            colour = np.repeat(colour, 3, axis=2)
        if not layout.alpha:
            return colour
        alpha = np.clip(values[..., colours:colours + 1] / np.float32(_alpha_peak(layout)), 0, 1)  # (h, w, 1)
        background = np.asarray(self.background, dtype=np.float32) * (1 - alpha)
        if layout.alpha == 1:  # associated: the colours already carry their alpha
            return np.clip(colour + background, 0, 255)
        return colour * alpha + background


def _alpha_peak(layout: TiffLayout) -> float:
    return 1.0 if layout.kind in "bf" else float(2 ** layout.bits - 1)


def conversion(tif: TiffFile, layout: TiffLayout, background: tuple[int, int, int]) -> Conversion:
    """The file's Conversion (transparent pixels show `background`); for 16-bit and float samples this reads the
    smallest pyramid level once."""
    colormap = None
    low, high = 0.0, 255.0
    if layout.colour == "palette":
        key = _keyframe(tif.series[0].levels[0])
        colormap = np.asarray(key.colormap, dtype=np.float32) * np.float32(255.0 / 65535.0)  # (3, entries)
        colormap = np.ascontiguousarray(np.broadcast_to(colormap, (3, colormap.shape[-1])).T)  # (entries, 3)
    elif layout.kind == "b":
        high = 1.0
    elif layout.kind == "f" or layout.bits == 16:
        low, largest = _value_range(Level(tif, tif.series[0].levels[-1]), layout)
        if layout.kind == "f":
            high = largest
        else:
            low, high = 0.0, float(2 ** max(8, math.ceil(math.log2(largest + 1))) - 1)
    elif layout.bits != 8:
        high = float(2 ** layout.bits - 1)  # declared 2..15-bit data: its own range
    return Conversion(layout, low, high, colormap, background)


def _value_range(level: Level, layout: TiffLayout) -> tuple[float, float]:
    """(smallest, largest) colour value of a level (alpha excluded, NaN ignored), a band of rows at a time."""
    colours = 4 if layout.colour == "cmyk" else 3 if layout.colour == "rgb" else 1
    low, high = math.inf, -math.inf
    rows = max(1, BAND_BYTES // (level.width * level.samples * 4))
    for top in range(0, level.height, rows):
        band = level.read(0, top, level.width, min(level.height, top + rows))[..., :colours]
        if band.dtype.kind == "f":
            band = band[np.isfinite(band)]
            if not band.size:
                continue
        low, high = min(low, float(band.min())), max(high, float(band.max()))
    return (0.0, 0.0) if low > high else (low, high)


# --------------------------------------------------------------------------------------------
# the image at a size, region by region
# --------------------------------------------------------------------------------------------

class ScaledTiff:
    """The first image of an open TIFF at `size` = (width, height) px, upright: read(x, y, w, h) gives uint8 RGB
    (3, h, w) of that region, decoding only the chunks under it, from the smallest pyramid level at least as
    large as `size` (level 0 when there is no pyramid); transparent pixels show `background`."""

    def __init__(self, tif: TiffFile, layout: TiffLayout, size: tuple[int, int], background: tuple[int, int, int]):
        self.size = size
        self.layout = layout
        self.flip_rows, self.flip_cols, self.transpose = _ORIENTATION[layout.orientation]
        width, height = size
        self.stored = (height, width) if self.transpose else (width, height)  # the target, as stored
        levels = tif.series[0].levels
        fits = [i for i, (w, h) in enumerate(layout.levels) if w >= self.stored[0] and h >= self.stored[1]]
        self.level = Level(tif, levels[fits[-1] if fits else 0])
        self.conversion = conversion(tif, layout, background)

    def read(self, x: int, y: int, w: int, h: int) -> torch.Tensor:
        """uint8 (3, h, w): the region at (x, y) of the upright image at `size`."""
        width, height = self.size
        if not (0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height):
            raise ValueError(f"region ({x}, {y}, {w}, {h}) is not inside the {width}x{height} image")
        if self.transpose:
            x, y, w, h = y, x, h, w
        if self.flip_rows:
            y = self.stored[1] - y - h
        if self.flip_cols:
            x = self.stored[0] - x - w
        pixels = self._read_stored(x, y, w, h)
        flips = [dim for dim, flip in ((1, self.flip_rows), (2, self.flip_cols)) if flip]
        if flips:
            pixels = pixels.flip(flips)
        return pixels.transpose(1, 2).contiguous() if self.transpose else pixels

    def _read_stored(self, x: int, y: int, w: int, h: int) -> torch.Tensor:
        """The region in stored orientation, a band of output rows at a time."""
        level, (target_w, target_h) = self.level, self.stored
        out = torch.empty(3, h, w, dtype=torch.uint8)
        same = (level.width, level.height) == (target_w, target_h)  # a level at exactly this size: no resize
        columns = taps(level.width, target_w, x, x + w)
        left, right = (x, x + w) if same else source_span(columns[0])
        # source rows per pass: float32 RGB of the columns read (source width) within BAND_BYTES
        rows = max(1, BAND_BYTES // (12 * (right - left)))
        band = rows if same else output_band(level.height, target_h, max(1, BAND_BYTES // (12 * w)))
        for start in range(y, y + h, band):
            stop = min(y + h, start + band)
            if same:
                pixels = self._rgb(left, start, right, stop)
            else:
                index, weight = taps(level.height, target_h, start, stop)
                top, bottom = source_span(index)
                # each sub-band of source rows resized across first: what is kept is (rows, w, 3), small
                across = np.empty((bottom - top, w, 3), dtype=np.float32)
                for r in range(top, bottom, rows):
                    across[r - top:min(bottom, r + rows) - top] = resample(
                        self._rgb(left, r, right, min(bottom, r + rows)), 1, *columns, left)
                pixels = resample(across, 0, index, weight, top)                     # (stop - start, w, 3)
            band_pixels = pixels if pixels.dtype == np.uint8 else np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
            out[:, start - y:stop - y] = torch.from_numpy(band_pixels).permute(2, 0, 1)
        return out

    def _rgb(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level samples of a rectangle as float32 RGB (y1 - y0, x1 - x0, 3)."""
        return self.conversion.rgb(self.level.read(x0, y0, x1, y1))
