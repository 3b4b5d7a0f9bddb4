"""Per-image transforms (torchvision.transforms.v2 on uint8 tensors, run in the DataLoader workers) and the
preprocessing record a run stores with its weights.

Workers hand over uint8 pixels; normalisation happens on the training device (`normalize`), after the
batch augmentation of cnnlab.data.augment when it runs there. The `default` preset is the lecture's
pipeline (RandomHorizontalFlip, RandomRotation(10), RandomResizedCrop(scale 0.8-1), ColorJitter
0.2/0.2/0.2/0.1, then Normalize); where it runs is `augment_on`:
    workers  every op per image in the workers (torchvision v2, as the lecture writes it)
    device   the workers only crop (RandomResizedCrop); flip, rotation and colour jitter run on the
             whole batch on the device, with different parameters per image (cnnlab.data.augment)
`none` and evaluation are a deterministic resize + center crop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torchvision.transforms import v2

from cnnlab.config import AUGMENT_ON, AUGMENT_PRESETS, check_choice
from cnnlab.data.tiles import RandomTile

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Images are first brought to a short side of img_size / 0.875 (the classic 224 <- 256 ratio):
# RandomResizedCrop(scale >= 0.8) then never upsamples, and rotation/jitter run on a small image
# instead of a 12-megapixel one.
DECODE_RATIO = 0.875
CROP_SCALE = (0.8, 1.0)  # the lecture's RandomResizedCrop(scale=(0.8, 1.0))


def decode_size(img_size: int, ratio: float = DECODE_RATIO) -> int:
    """Short side the decoder must deliver for crops of `img_size`."""
    return math.ceil(img_size / ratio)


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for the model; stored in model.json with the weights, and applied as
    stored by eval, predict, inspect and export, so a run predicts the way it was trained."""

    resize_short_side: int
    """The image's short side is resized to this first."""
    center_crop: int
    """Then the central square of this side is what the network sees."""
    decode_ratio: float = DECODE_RATIO
    """center_crop / the short side the decoder (and the cache) delivers."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean subtracted after scaling to 0..1 (RGB)."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation divided by (RGB)."""
    color: str = "RGB"
    """Channel order of the network input."""
    exif_orientation: bool = True
    """Images are turned upright by their EXIF orientation before anything else."""
    tile: int | None = None
    """Tiled runs: the network sees tiles of this side cut from the image at `scale` (no resize or crop of the
    whole image); None: the whole image, resized and center-cropped."""
    scale: float = 1.0
    """Tiled runs: the pixel scale tiles are cut at (1.0 = the file's own pixels, 0.5 = half)."""
    overlap: float = 0.5
    """Tiled prediction: the share of a tile that overlaps its neighbour in the sliding window."""
    aggregate: str = "mean"
    """Tiled prediction: how tile logits become the image's (mean, or max for classes present anywhere), or
    attention: the image is a bag of its tiles, pooled by the model's learned attention (cnnlab.models.mil)."""
    bag_tiles: int | None = None
    """Bag runs (aggregate attention): the tiles of an image, ranked by attention, that are pooled (M)."""

    @classmethod
    def for_size(cls, img_size: int) -> "Preprocessing":
        """The record for a run trained at `img_size` with today's constants."""
        return cls(resize_short_side=img_size, center_crop=img_size)

    @classmethod
    def for_tiles(cls, tile: int, scale: float, overlap: float = 0.5, aggregate: str = "mean",
                  bag_tiles: int | None = None) -> "Preprocessing":
        """The record of a run trained on tiles of `tile` px at pixel scale `scale` (with aggregate attention: on
        bags of them, `bag_tiles` pooled per image)."""
        return cls(resize_short_side=tile, center_crop=tile, tile=tile, scale=scale, overlap=overlap,
                   aggregate=aggregate, bag_tiles=bag_tiles if aggregate == "attention" else None)

    @property
    def decode_size(self) -> int:
        """Short side to decode (and cache) at, for whole-image runs."""
        return decode_size(self.center_crop, self.decode_ratio)

    # --- the view of an image this record describes: whole (resized, centre-cropped) or tiles at a scale ---------
    # Every reader asks these instead of branching on `tile` itself.

    @property
    def tiled(self) -> bool:
        """Whether the network sees tiles of the whole image at `scale` (else the whole image, resized)."""
        return self.tile is not None

    @property
    def bags(self) -> bool:
        """Whether an image is one bag of its tiles with one label (aggregate attention), trained and predicted
        whole; else a tiled run's tiles are samples of their own."""
        return self.tiled and self.aggregate == "attention"

    @property
    def resolution(self) -> int | float:
        """What images are read (and cached) at, read_at's argument: the short side the crop starts from (int), or
        for tiles the pixel scale (float). Never below resize_short_side: a record whose resize asks for more than the
        decode ratio gives (an older or edited model.json) must not be shrunk first and enlarged after."""
        return float(self.scale) if self.tiled else max(self.decode_size, self.resize_short_side)

    def eval_transform(self) -> v2.Compose:
        """uint8 in and out, deterministic: the resize and centre crop of a whole image; for tiles the whole image
        at its scale as it is (the sliding window cuts it)."""
        if self.tiled:
            return v2.Compose([v2.Identity()])
        return v2.Compose([v2.Resize(self.resize_short_side, antialias=True), v2.CenterCrop(self.center_crop)])

    def one_input(self, image: torch.Tensor) -> torch.Tensor:
        """One input (3, S, S) uint8 of the network from an image read at `resolution`: the evaluation view of a
        whole image, or the central window of a tiled one (what `cnnlab inspect` shows the network looking at)."""
        if not self.tiled:
            return self.eval_transform()(image)
        height, width = image.shape[1:]
        top, left = max(0, (height - self.tile) // 2), max(0, (width - self.tile) // 2)
        return image[:, top:top + self.tile, left:left + self.tile]

    def images_per_batch(self, batch_size: int) -> int:
        """Images per evaluation batch: `batch_size` crops, or one whole image (its windows are batched instead)."""
        return 1 if self.tiled else batch_size

    def to_dict(self) -> dict:
        """JSON-ready dict (lists, not tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict, img_size: int) -> "Preprocessing":
        """The stored record; keys an older run did not write take the values it was trained with then."""
        known = {f.name for f in fields(cls)}
        kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**{"resize_short_side": img_size, "center_crop": img_size} | kept)


def train_transform(preset: str, img_size: int, augment_on: str = "workers") -> v2.Compose:
    """The per-image part of a preset (uint8 in and out); random parameters drawn anew for every read."""
    check_choice("augment", preset, AUGMENT_PRESETS)
    check_choice("augment_on", augment_on, AUGMENT_ON)
    if preset == "none":
        return Preprocessing.for_size(img_size).eval_transform()
    if augment_on == "device":  # the rest of the preset runs on the batch (cnnlab.data.augment)
        return v2.Compose([v2.Resize(decode_size(img_size), antialias=True),
                           v2.RandomResizedCrop(img_size, scale=CROP_SCALE, antialias=True)])
    return v2.Compose([
        v2.Resize(decode_size(img_size), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomRotation(10),
        v2.RandomResizedCrop(img_size, scale=CROP_SCALE, antialias=True),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
    ])


def tile_train_transform(preset: str, tile: int, augment_on: str = "workers") -> v2.Compose:
    """Tiled runs: a random tile of the scaled image (no resize: the pixel scale is the point), then the
    preset's flip, rotation and colour jitter in the workers unless they run on the device."""
    check_choice("augment", preset, AUGMENT_PRESETS)
    steps = [RandomTile(tile)]
    if preset == "default" and augment_on == "workers":
        steps += [v2.RandomHorizontalFlip(p=0.5), v2.RandomRotation(10),
                  v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)]
    return v2.Compose(steps)


def training_transform(preprocessing: Preprocessing, preset: str, augment_on: str) -> v2.Compose:
    """The per-image transform training reads images through: a random tile of the scaled image (tiled runs), or
    the preset's crop of the whole image; the one place the view of an image decides how it is trained on."""
    if preprocessing.tiled:
        return tile_train_transform(preset, preprocessing.tile, augment_on)
    return train_transform(preset, preprocessing.center_crop, augment_on)


def normalize(images: torch.Tensor, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD,
              inplace: bool = False) -> torch.Tensor:
    """uint8 (N, 3, H, W) in 0..255 (or float in 0..1) -> float32 normalised per channel, on its device;
    `inplace` overwrites a float input (the caller's own scratch tensor) instead of allocating two more."""
    if images.dtype == torch.uint8:
        images, inplace = images.float().div_(255), True
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    if inplace:
        return images.sub_(mean_t).div_(std_t)
    return (images - mean_t) / std_t


def denormalize(batch: torch.Tensor, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> torch.Tensor:
    """Undo normalize for display: (N, 3, H, W) float -> same shape in 0..1."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=batch.device).view(1, 3, 1, 1)
    return (batch * std_t + mean_t).clamp(0, 1)
