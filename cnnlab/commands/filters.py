"""Convolution as a feature filter, on your own photo: the NumPy conv2d (and pooling) from cnnlab.scratch.

A kernel is a small grid of weights; sliding it over the image and taking the weighted sum at every
position gives a map that is bright where the image looks like the kernel (an edge, a blob, a texture).
The picture written shows the input and the output side by side with every shape in the title, e.g.

    input 3x512x768 → conv k=3x3 s=1 p=1 → 1x512x768 → maxpool 2 → 1x256x384

so (H + 2p - k)/s + 1 can be checked by eye.

Colour: a 2-D kernel K (the named ones, or a (kH, kW) .npy file) is applied to the luminance
Y = 0.299 R + 0.587 G + 0.114 B. It is written as the (1, 3, kH, kW) conv weight whose channel c is
lum[c]·K, which by linearity is the same thing, and is exactly a conv layer with one output channel on
an RGB image: one feature map. A 4-D (C_out, C_in, kH, kW) .npy kernel is used as it is, with C_in = 3
(RGB) or 1 (luminance).

Large photos are decoded reduced (read_image's min_size), then resized so the short side is `size`
pixels: the NumPy convolution copies kH·kW values per pixel, which a 24-megapixel photo makes slow.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from cnnlab.config import Help
from cnnlab.errors import CnnlabError

# name -> (kernel (kH, kW), what it does); all 3x3 except the 5x5 gaussian.
KERNELS: dict[str, tuple[np.ndarray, str]] = {
    "sobel-x": (np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
                "horizontal derivative: strong at vertical edges, signed by the direction of the change"),
    "sobel-y": (np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]),
                "vertical derivative: strong at horizontal edges"),
    "laplacian": (np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
                  "second derivative: edges and fine detail in every direction, 0 on flat areas"),
    "gaussian": (np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256,
                 "5x5 blur: a weighted average where nearer pixels count more"),
    "box": (np.ones((3, 3)) / 9, "3x3 blur: the plain average of each neighbourhood"),
    "sharpen": (np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
                "the image minus its Laplacian: boosts edges and detail"),
    "emboss": (np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]),
               "diagonal derivative plus the image: a relief look"),
}

LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of R, G, B
POOLS = ("max", "avg")


@dataclass
class FilterResult:
    """What filter_image did: the shapes at each step, the output maps and the picture written."""

    image: str  # the input file
    kernel: str  # kernel name or .npy path
    weight: np.ndarray  # (C_out, 3, kH, kW) float32, the conv weight applied
    original_size: tuple[int, int]  # (H, W) of the file, upright
    input_shape: tuple[int, int, int]  # (3, H, W) after reduction, what the convolution saw
    conv_shape: tuple[int, int, int]  # (C_out, H_conv, W_conv)
    output_shape: tuple[int, int, int]  # after pooling (= conv_shape without pooling)
    output: np.ndarray  # (C_out, H_out, W_out) float32, pixel values of the input in 0..1
    title: str  # "input 3x512x768 → conv k=3x3 s=1 p=1 → 1x512x768 → ..."
    notes: list[str] = field(default_factory=list)  # reduction and dropped-pixel remarks
    out: Path | None = None  # the PNG written

    def describe(self) -> str:
        """Lines printed by `cnnlab filter`."""
        return "\n".join([self.title, *self.notes] + ([f"wrote {self.out}"] if self.out else []))


def describe_kernels() -> str:
    """One line per named kernel: name and what it does."""
    return "\n".join(f"{name:10s} {kernel.shape[0]}x{kernel.shape[1]}  {text}" for name, (kernel, text) in KERNELS.items())


def load_kernel(kernel: str | os.PathLike | np.ndarray) -> tuple[np.ndarray, str]:
    """A named kernel, a .npy file or an array -> ((C_out, C_in, kH, kW) float32 weight, its name)."""
    if isinstance(kernel, np.ndarray):
        return _check_kernel(kernel, "the kernel array"), "array"
    text = os.fspath(kernel)
    if text in KERNELS:
        return KERNELS[text][0].astype(np.float32)[None, None], text
    if not text.lower().endswith(".npy"):
        close = difflib.get_close_matches(text, list(KERNELS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise CnnlabError(f"unknown kernel '{text}'; {hint}use one of {', '.join(KERNELS)}, or a .npy file")
    path = Path(text)
    if not path.is_file():
        raise CnnlabError(f"kernel file {path} does not exist; give a .npy file saved with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)  # never unpickle: a .npy from elsewhere could run code
    except (ValueError, OSError, EOFError) as error:
        raise CnnlabError(f"cannot read kernel file {path} ({error}); save it with numpy.save(path, array) "
                          "from a numeric array") from None
    return _check_kernel(array, f"kernel file {path}"), text


def _check_kernel(array: np.ndarray, where: str) -> np.ndarray:
    """Validate a kernel array and return it as a (C_out, C_in, kH, kW) float32 weight."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise CnnlabError(f"{where} holds {array.dtype} values; a kernel must be real numbers")
    if array.ndim not in (2, 4) or array.size == 0:
        raise CnnlabError(f"{where} has shape {array.shape}; a kernel must be 2-D (kH, kW) or "
                          "4-D (C_out, C_in, kH, kW) with C_in = 3 (RGB) or 1 (luminance)")
    if not np.all(np.isfinite(array)):
        raise CnnlabError(f"{where} contains NaN or infinite values")
    weight = array.astype(np.float32)
    weight = weight[None, None] if weight.ndim == 2 else weight
    if weight.shape[1] not in (1, 3):
        raise CnnlabError(f"{where} has shape {array.shape}: C_in = {weight.shape[1]}, but an image has "
                          "3 channels (RGB) or 1 (luminance)")
    return weight


def _rgb_weight(weight: np.ndarray) -> np.ndarray:
    """(C_out, 1, kH, kW) luminance kernels -> (C_out, 3, kH, kW), channel c scaled by LUMINANCE[c]."""
    if weight.shape[1] == 3:
        return weight
    return (weight * LUMINANCE.astype(np.float32)[None, :, None, None]).astype(np.float32)


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape)


def _dropped_note(step: str, height: int, width: int, kernel: tuple, stride: tuple, padding: tuple) -> str | None:
    """A sentence when the output-size formula leaves real rows or columns unread, else None."""
    from cnnlab.scratch import output_size_info

    infos = [output_size_info(size, k, s, p) for size, k, s, p in zip((height, width), kernel, stride, padding)]
    if not any(info.dropped for info in infos):
        return None
    return (f"{step}: (size + 2p - k)/s is not a whole number, so the last {infos[0].dropped} row(s) and "
            f"{infos[1].dropped} column(s) of its {height}x{width} input are never read (handle with care)")


def _read_reduced(path: str, size: int) -> tuple[np.ndarray, tuple[int, int], list[str]]:
    """(3, H, W) float32 in 0..1 with short side <= size (0: full size), the file's (H, W), notes."""
    import torch
    from torchvision.transforms.v2 import functional as F

    from cnnlab.data.images import image_size, read_image

    width, height = image_size(path)
    image = read_image(path, min_size=size or None)  # integer reduction in the decoder: short side in [size, 2 size)
    notes = []
    if size and min(image.shape[1:]) > size:
        image = F.resize(image, size, antialias=True)  # short side = size, aspect ratio kept
    if tuple(image.shape[1:]) != (height, width):
        notes.append(f"reduced {width}x{height} to {image.shape[2]}x{image.shape[1]} pixels (W x H) so the short "
                     f"side is {min(image.shape[1:])} (--size {size}; 0 keeps the full size)")
    return image.to(torch.float32).numpy() / 255.0, (height, width), notes


def filter_image(image_path: Annotated[str | os.PathLike, Help("Image file.")],
                 kernel: Annotated[str | os.PathLike | np.ndarray, Help(
                     "sobel-x, sobel-y, laplacian, gaussian, box, sharpen, emboss, or a .npy file of shape (kH, kW) "
                     "or (C_out, C_in, kH, kW).")] = "sobel-x",
                 stride: Annotated[int, Help("Convolution stride.")] = 1,
                 padding: Annotated[int, Help("Zeros added on each side before convolving.")] = 1,
                 pool: Annotated[str | None, Help("Pool the result: max or avg.")] = None,
                 pool_size: Annotated[int, Help("Pooling window (and stride).")] = 2,
                 out: Annotated[str | os.PathLike | None, Help("PNG to write: input and output side by side, shapes "
                                                               "in the title.")] = None,
                 size: Annotated[int, Help("Reduce the image so its short side is at most this (0: full size).")]
                 = 512) -> FilterResult:
    """Apply a convolution kernel (NumPy, from scratch) to an image and show the result with its shapes.

    Writes input|output side by side as a PNG when `out` is given."""
    from cnnlab.scratch import avg_pool2d, conv2d, max_pool2d

    if stride < 1 or padding < 0 or pool_size < 1 or size < 0:
        raise CnnlabError(f"--stride {stride} --padding {padding} --pool-size {pool_size} --size {size}: "
                          "need --stride >= 1, --padding >= 0, --pool-size >= 1, --size >= 0")
    if pool is not None and pool not in POOLS:
        raise CnnlabError(f"--pool {pool!r}; use max, avg or leave it out")
    weight, name = load_kernel(kernel)
    rgb_weight = _rgb_weight(weight)  # (C_out, 3, kH, kW)
    pixels, original, notes = _read_reduced(os.fspath(image_path), size)  # (3, H, W)
    _, height, width = pixels.shape
    kernel_hw = rgb_weight.shape[2:]
    try:
        conv = conv2d(pixels[None], rgb_weight, stride=stride, padding=padding)[0]  # (C_out, H_conv, W_conv)
    except ValueError as error:
        raise CnnlabError(f"kernel {name} {_shape(kernel_hw)} with stride={stride}, padding={padding} does not "
                          f"fit the {height}x{width} image: {error}") from None
    note = _dropped_note("conv", height, width, kernel_hw, (stride, stride), (padding, padding))
    notes += [note] if note else []
    title = (f"input {_shape(pixels.shape)} → conv k={_shape(kernel_hw)} s={stride} p={padding} "
             f"→ {_shape(conv.shape)}")
    output = conv
    if pool is not None:
        pooling = max_pool2d if pool == "max" else avg_pool2d
        try:
            output = pooling(conv[None], pool_size)[0]  # stride = pool_size: windows tile without overlap
        except ValueError as error:
            raise CnnlabError(f"{pool} pooling of size {pool_size} does not fit the {_shape(conv.shape)} "
                              f"convolution output: {error}") from None
        note = _dropped_note(f"{pool}pool {pool_size}", *conv.shape[1:], (pool_size,) * 2, (pool_size,) * 2, (0, 0))
        notes += [note] if note else []
        title += f" → {pool}pool {pool_size} → {_shape(output.shape)}"
    result = FilterResult(image=os.fspath(image_path), kernel=name, weight=rgb_weight, original_size=original,
                          input_shape=tuple(pixels.shape), conv_shape=tuple(conv.shape),
                          output_shape=tuple(output.shape), output=output, title=title, notes=notes)
    if out is not None:
        from cnnlab.plots import filter_panels

        result.out = filter_panels(pixels.transpose(1, 2, 0), output, out, title)
    return result


__all__ = ["KERNELS", "FilterResult", "describe_kernels", "filter_image", "load_kernel"]


def show(result: FilterResult) -> None:
    """The shapes and the file written."""
    print(result.describe(), flush=True)


def show_summary(result, as_json: Annotated[bool, Help("Print the table as JSON instead.", flag="--json")] = False
                 ) -> None:
    """The layer table (`cnnlab summary`), or its JSON."""
    print(json.dumps(result.to_dict()) if as_json else result.describe(), flush=True)
