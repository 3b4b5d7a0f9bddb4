"""The one module that opens image files: decode to a uint8 RGB tensor, and write images.

Every reader in cnnlab (training, evaluation, prediction, inspection, data checks) comes through
`read_image`, so EXIF orientation, mode conversions and the pixel cap are applied identically
everywhere.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import ImageReadError

# File suffixes treated as images when scanning folders (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# 200 megapixels: larger than any phone or DSLR photo, small enough that a forged header
# cannot make us allocate tens of GB. Checked from the header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 200_000_000

# Background that transparent pixels are composited on: neutral grey, so that alpha does not
# turn into black (PIL's default) or white and bias the colour statistics.
ALPHA_BACKGROUND = (128, 128, 128)


def is_image_file(path: str | os.PathLike) -> bool:
    """True if the file name has an image suffix (the content is not checked)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and enforce the pixel cap before decoding."""
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "the file is empty (0 bytes)")
        image = Image.open(path)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file (unknown format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(path, f"cannot open ({error})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageReadError(
            path, f"{width}x{height} = {width * height / 1e6:.0f} MP is over the pixel cap of "
            f"{max_pixels / 1e6:.0f} MP (raise --max-pixels if the file is genuine)")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB correctly (16-bit scaled, alpha composited on grey)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: scale the value range to 0..255 instead of clipping,
        # which is what convert("RGB") does and why 16-bit PNGs come out almost white.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        array = (array - low) / (high - low or 1.0) * 255.0
        return Image.fromarray(np.nan_to_num(array).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if mode in ("RGBA", "LA", "PA") or image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _draft_size(width: int, height: int, min_size: int) -> tuple[int, int]:
    """Size to request from the JPEG decoder so that the short side stays >= min_size."""
    short = min(width, height)
    scale = min_size / short
    return math.ceil(width * scale), math.ceil(height * scale)


def read_pil(path: str | os.PathLike, min_size: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file to an 8-bit RGB PIL image, upright (EXIF applied).

    With `min_size`, JPEGs are decoded with DCT-domain reduction (1/2, 1/4, 1/8) to the smallest
    scale whose short side is still >= min_size: the same pixels a full decode + resize would give,
    at a fraction of the cost for large photos.
    """
    path = Path(path)
    image = _open(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF/ICC data; orientation still works
            if min_size is not None and image.format == "JPEG":
                width, height = image.size
                if min(width, height) > 2 * min_size:
                    image.draft("RGB", _draft_size(width, height, min_size))
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(path, f"corrupt or truncated ({error})") from None


def read_image(path: str | os.PathLike, min_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image file to a uint8 tensor of shape (3, H, W), upright, RGB."""
    image = read_pil(path, min_size=min_size, max_pixels=max_pixels)
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header only, after EXIF orientation."""
    image = _open(Path(path), max_pixels)
    with image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


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
