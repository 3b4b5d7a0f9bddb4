"""An int8 copy of an exported ONNX file for CPUs: onnxruntime's static quantization, calibrated on the run's own
training images, checked against the float32 file on the validation split and timed against it on this CPU.

    1. calibration: up to CALIBRATION_INPUTS network inputs from the run's TRAINING split (never the validation images
       the copy is then judged on), prepared as predict prepares them: the evaluation view, no augmentation; tiled runs:
       windows of the sliding window. Classes take turns, images shuffled within a class by the run's seed;
    2. quantization: shape inference and onnxruntime's basic graph optimisation (quant_pre_process, which folds
       constants so a convolution's weights are one tensor), then quantize_static in QDQ format;
    3. verification: both files score every image of the VALIDATION split as predict scores it (tiled runs: every
       window, pooled as the run pools them): top-1 agreement, both accuracies and the accuracy difference with its
       paired 95% interval (paired_interval, Agresti and Min's);
    4. speed: both files at batch 1 and 16 on this CPU with the same threads (measure_speed).

The choices, and why:
  - QDQ format: QuantizeLinear/DequantizeLinear pairs around float ops, which onnxruntime's CPU provider fuses into
    integer kernels (QLinearConv, QGemm); the format onnxruntime recommends for CPUs since 1.11.
  - weights int8, symmetric, one scale per output channel: after BatchNorm is folded in, a convolution's output
    channels have weight ranges that differ by one to two orders of magnitude, and one scale per tensor would leave
    the small channels a handful of levels.
  - activations uint8, asymmetric: after a ReLU activations are >= 0, and uint8 with a zero point spends all 256
    levels on [min, max] (onnxruntime's advice for x86: uint8 activations, int8 weights).
  - reduce_range: weights in [-64, 64] (7 bits). x86 CPUs without VNNI multiply uint8 x int8 with VPMADDUBSW, whose
    pairwise sums saturate at int16 (255 * 127 * 2 = 64770 > 32767); with these weights they cannot (255 * 64 * 2 =
    32640). So the
    integer products are exact on every x86 CPU, and saturation on the machine it is deployed to cannot undo the check
    made here. The bit of weight resolution it costs is in the measured agreement.
  - MinMax calibration: each calibration run adds two numbers per tensor, so memory does not grow with the number of
    images; Entropy and Percentile keep every activation tensor until their histograms are built (about 100 MB per
    224 px image for resnet50). Percentile's clipping can help a network with rare huge activations; a file where
    MinMax's ranges cost accuracy is refused by the verification, not written.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.data.folders import Sample
from cnnlab.data.tiles import cut_tiles, tile_positions
from cnnlab.data.transforms import normalize
from cnnlab.errors import CnnlabError
from cnnlab.runs.evaluation import split_samples
from cnnlab.runs.exported import INPUT_NAME, OUTPUT_NAME, OnnxClassifier
from cnnlab.runs.inference import TrainedModel

# Network inputs the activation ranges are measured on. A MinMax range is the extreme over the inputs: 256 inputs,
# taken class by class, give each of 10 classes 25 or more, and the ranges are then judged by the verification on
# the validation split. More inputs only widen the ranges by rarer outliers (coarser steps for every other value),
# at one float32 forward pass each.
CALIBRATION_INPUTS = 256
CALIBRATION_BATCH = 16  # inputs per calibration run: the ranges are the same whatever the batch; memory is not
ACCURACY_TOLERANCE = 1.0  # percentage points: the largest accepted drop of validation accuracy (see below)
# int8 rounding moves every logit a little, so it should change a prediction only where two classes are nearly tied.
# A drop of more than one point of accuracy is more than rounding (a layer whose range was set badly), and one point
# is the size of difference models are chosen by. The agreement floor guards what the accuracy cannot see: the run's
# evaluation (confusion matrix, per-class recall, reject.json's threshold) describes the int8 file only as far as the
# two predict alike, even when gained and lost images cancel out in the accuracy. Below 50 validation images a single
# changed prediction is already below the floor: such a split cannot vouch for an int8 file.
AGREEMENT_FLOOR = 0.98
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
SPEED_BATCHES = (1, 16)  # one image at a time (serve, a photo), and a batch (predict over a folder, sliding windows)
WARMUP_RUNS = 3  # the first runs of a session allocate its buffers and pick kernels
SPEED_REPEATS = 5  # timed runs per file and batch size at least; then more until SPEED_SECONDS
SPEED_SECONDS = 1.0  # per file and batch size: enough runs of a small network for a steady median


# --- calibration -----------------------------------------------------------------------------------------------------
def in_turn(samples: list[Sample], seed: int | None = None) -> list[Sample]:
    """The samples with the classes taking turns (the first of every class, then the second, ...); with `seed`,
    shuffled within each class first."""
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    groups = list(by_class.values())
    if seed is not None:
        rng = np.random.default_rng(seed)
        groups = [[group[i] for i in rng.permutation(len(group))] for group in groups]
    return [group[i] for i in range(max(map(len, groups), default=0)) for group in groups if i < len(group)]


def calibration_inputs(trained: TrainedModel, data: str | None = None,
                       limit: int = CALIBRATION_INPUTS) -> tuple[torch.Tensor, int]:
    """(N, 3, S, S) uint8 network inputs (N <= limit) from the run's training split as predict prepares them, and
    the number of images they came from. Tiled runs: windows of each image's sliding window drawn at random (the
    run's seed), as many per image as it takes to reach `limit` when the split has fewer images."""
    seed = trained.record.config.seed if trained.record.config else 0
    samples = in_turn(split_samples(trained.record, data, "train"), seed)
    pre = trained.preprocessing
    per_image = max(1, math.ceil(limit / max(1, len(samples))))
    # the images it takes, twice over for unreadable ones: a split of 100,000 is not opened for 256 inputs
    samples = samples[:2 * math.ceil(limit / per_image)]
    dataset = trained.dataset(samples)
    rng = np.random.default_rng(seed)
    inputs, images = [], 0
    for index in range(len(samples)):
        item = dataset[index]  # None for an unreadable file (warned about once)
        if item is None:
            continue
        picture = item[0]                                                   # (3, S, S) or (3, H, W) uint8
        if pre.tiled:
            positions = tile_positions(picture.shape[1], picture.shape[2], pre.tile, pre.overlap)
            chosen = rng.choice(len(positions), size=min(per_image, len(positions)), replace=False)
            inputs.extend(cut_tiles(picture, [positions[i] for i in sorted(chosen)], pre.tile))
        else:
            inputs.append(picture)
        images += 1
        if len(inputs) >= limit:
            break
    if not inputs:
        raise CnnlabError(f"no readable image in the training split of {trained.record.data_dir(data)} to calibrate "
                          "the int8 copy on; pass --data with a folder of the run's classes")
    return torch.stack(inputs[:limit]), images


class CalibrationReader:
    """onnxruntime's CalibrationDataReader over uint8 inputs: batches normalised as the run normalises, one per
    get_next, None at the end."""

    def __init__(self, inputs: torch.Tensor, mean: tuple, std: tuple, batch_size: int = CALIBRATION_BATCH):
        self.inputs, self.mean, self.std, self.batch_size = inputs, mean, std, batch_size
        self.start = 0

    def get_next(self) -> dict | None:
        if self.start >= len(self.inputs):
            return None
        batch = self.inputs[self.start:self.start + self.batch_size]            # (b, 3, S, S) uint8
        self.start += self.batch_size
        return {INPUT_NAME: normalize(batch, self.mean, self.std).numpy()}


def quantize(float_model: bytes, inputs: torch.Tensor, mean: tuple, std: tuple, name: str) -> bytes:
    """The float32 ONNX model as serialized int8 QDQ ONNX (weights int8 per channel in [-64, 64], activations uint8),
    its activation ranges the MinMax of the graph's tensors over `inputs` (N, 3, S, S) uint8."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    with tempfile.TemporaryDirectory(prefix="cnnlab-int8-") as folder:
        source, prepared, target = (Path(folder) / n for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(float_model)
        try:
            # symbolic shape inference is for transformers' dynamic shapes; ONNX's own covers a CNN
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(target), CalibrationReader(inputs, mean, std),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types; the message names the op
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CnnlabError(f"onnxruntime could not quantize the exported {name} to int8: {first[:400]}") from None
        return target.read_bytes()


# --- verification ----------------------------------------------------------------------------------------------------
class PairedSessions(nn.Module):
    """Two onnxruntime files on the same input: forward(x) (N, 3, S, S) -> (N, 2K), the first file's logits then the
    second's. One pass over a split decodes each image once and scores both; the sliding window pools each half as
    it pools one model's logits (mean and max are per class)."""

    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = OnnxClassifier(first, "float32"), OnnxClassifier(second, "int8")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first(x), self.second(x)], dim=1)


@dataclass
class Agreement:
    """The int8 file against the float32 file on the images of one split."""

    images: int
    same_top1: int
    """Images both files give the same top-1 class."""
    float_correct: int
    int8_correct: int
    int8_only: int
    """Images only the int8 file classifies correctly."""
    float_only: int
    """Images only the float32 file classifies correctly."""
    interval: tuple[float, float]
    """95% interval of int8 accuracy - float32 accuracy (paired_interval)."""

    @property
    def agreement(self) -> float:
        return self.same_top1 / self.images

    @property
    def float_accuracy(self) -> float:
        return self.float_correct / self.images

    @property
    def int8_accuracy(self) -> float:
        return self.int8_correct / self.images

    @property
    def difference(self) -> float:
        """int8 accuracy - float32 accuracy (negative: int8 is worse)."""
        return (self.int8_correct - self.float_correct) / self.images

    def to_dict(self) -> dict:
        return asdict(self) | {"interval": list(self.interval), "agreement": self.agreement,
                               "float_accuracy": self.float_accuracy, "int8_accuracy": self.int8_accuracy,
                               "difference": self.difference}


def paired_interval(first_only: int, second_only: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% interval of p1 - p2, two proportions measured on the same n items, of which `first_only` count for p1 alone
    and `second_only` for p2 alone: Agresti and Min's adjusted Wald interval for matched pairs (Statistics in Medicine
    24, 729-740, 2005), the paired normal interval after half an item is added to each cell of the 2x2 table.

    Why this one: the plain paired normal interval ((b - c) / n +- z * its standard error) and the paired bootstrap
    both give [0, 0] when no image changed, the usual case here, as if 50 images proved int8 exactly as accurate;
    with the half counts the interval keeps the width the split's size allows (+-z / (n + 2) when nothing changed:
    +-0.5 points at 360 images, +-3.8 at 50), its coverage stays near 95% on small splits (Agresti and Min's
    evaluation), and it is closed-form, with no resampling."""
    b, c, m = first_only + 0.5, second_only + 0.5, n + 2
    centre = (b - c) / m
    half = z * math.sqrt(b + c - (b - c) ** 2 / m) / m
    return max(-1.0, centre - half), min(1.0, centre + half)


def agreement_of(float_logits: torch.Tensor, int8_logits: torch.Tensor, labels: torch.Tensor) -> Agreement:
    """Counts and the paired interval from both files' logits (N, K) of images with true classes `labels` (N,)."""
    float_top, int8_top = float_logits.argmax(1), int8_logits.argmax(1)
    float_right, int8_right = float_top == labels, int8_top == labels
    int8_only, float_only = int((int8_right & ~float_right).sum()), int((float_right & ~int8_right).sum())
    return Agreement(len(labels), int((float_top == int8_top).sum()), int(float_right.sum()), int(int8_right.sum()),
                     int8_only, float_only, paired_interval(int8_only, float_only, len(labels)))


def compare_on_split(trained: TrainedModel, float_session, int8_session, data: str | None = None,
                     split: str = "val") -> Agreement:
    """Both files on every readable image of `split`, scored as predict scores them (tiled runs: the sliding window
    pooled as the run pools it)."""
    samples = split_samples(trained.record, data, split)
    paired = TrainedModel(PairedSessions(float_session, int8_session), trained.record, trained.pipeline,
                          trained.which, trained.tiles, trained.pixel_cap)
    outputs = paired.logits(paired.loader(paired.dataset(samples)), description=f"int8 vs float32 on {split}")
    if len(outputs.labels) == 0:
        raise CnnlabError(f"no readable image in the {split} split of {trained.record.data_dir(data)} to check the "
                          "int8 copy on; pass --data with a folder of the run's classes")
    classes = outputs.logits.shape[1] // 2
    return agreement_of(outputs.logits[:, :classes], outputs.logits[:, classes:], outputs.labels)


# --- speed on this CPU -----------------------------------------------------------------------------------------------
@dataclass
class Speed:
    """Both files' median time for one batch on this CPU."""

    batch_size: int
    float_seconds: float
    int8_seconds: float
    repeats: int

    @property
    def ratio(self) -> float:
        """int8's speed / float32's (above 1: int8 is faster)."""
        return self.float_seconds / self.int8_seconds

    def to_dict(self) -> dict:
        return asdict(self) | {"ratio": self.ratio, "float_images_per_second": self.batch_size / self.float_seconds,
                               "int8_images_per_second": self.batch_size / self.int8_seconds}


def measure_speed(float_session, int8_session, inputs: np.ndarray,
                  batch_sizes: tuple[int, ...] = SPEED_BATCHES) -> list[Speed]:
    """Median seconds per batch of each session on the first inputs (N, 3, S, S) float32 (repeated if fewer), after
    WARMUP_RUNS; the two sessions alternate run by run, so a busy neighbour on a shared machine slows both alike."""
    speeds = []
    for batch_size in batch_sizes:
        batch = np.ascontiguousarray(np.resize(inputs, (batch_size, *inputs.shape[1:])))
        feed = {INPUT_NAME: batch}
        for _ in range(WARMUP_RUNS):
            float_session.run([OUTPUT_NAME], feed)
            int8_session.run([OUTPUT_NAME], feed)
        times: dict[str, list[float]] = {"float": [], "int8": []}
        started = time.perf_counter()
        while len(times["float"]) < SPEED_REPEATS or time.perf_counter() - started < SPEED_SECONDS:
            for name, session in (("float", float_session), ("int8", int8_session)):
                begin = time.perf_counter()
                session.run([OUTPUT_NAME], feed)
                times[name].append(time.perf_counter() - begin)
        speeds.append(Speed(batch_size, statistics.median(times["float"]), statistics.median(times["int8"]),
                            len(times["float"])))
    return speeds


# The CPU instructions that multiply 8-bit integers without VPMADDUBSW's int16 step (torch reads them with cpuinfo,
# the same flags as /proc/cpuinfo's, on every OS). Without them int8 can be slower than float32.
INT8_INSTRUCTIONS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_instructions() -> list[str]:
    """Which of INT8_INSTRUCTIONS this CPU has."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return [name for name in INT8_INSTRUCTIONS if capabilities.get(name)]
