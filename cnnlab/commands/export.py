"""`cnnlab export RUN`: the run's weights as an ONNX file, checked with onnxruntime before it is written.

    1. the model (best weights, float32, CPU) is exported by torch's current exporter: torch.export traces it
       (dynamo), onnxscript translates the graph; the batch axis is dynamic;
    2. the run's classes and preprocessing go into the file's metadata_props (see cnnlab.runs.exported);
    3. onnxruntime runs the serialized file on real images from the run's data, prepared exactly as predict
       prepares them, at batch sizes 1, 2 and 5, and its logits are compared with PyTorch's;
    4. only when every difference is within TOLERANCE is the file written (atomically, with <file>.json), so a
       refused export leaves nothing behind.

The tolerance, measured. onnxruntime computes the same float32 graph with other kernels (other convolution
algorithms, BatchNorm folded into the convolution, another summation order), so the logits differ by round-off.
How much round-off a network has shows when PyTorch itself runs it in float64. Over every registered model (random
weights, BatchNorm statistics from 16 random 32 px images, batch sizes 1, 2, 5; tests/commands/test_export.py)
onnxruntime's difference from PyTorch was the size of PyTorch's own float32 error (0.8x to 5x it) and at most
1.0e-4 of max(1, largest |logit|) (resnet50; resnet18 7e-6, simple_cnn and resnet9 below 2e-6). A worse-conditioned
network (BatchNorm statistics from only 5 images, logits up to 70) reached 4.3e-4 (regnet_y_400mf). A wrong graph
is off by the size of the logits themselves: the last layer scaled by 1.5 gives 0.17.
TOLERANCE = 1e-3 of max(1, largest |logit|) is 10x above the registry's worst round-off, 2.3x above the
ill-conditioned one, and 170x below that wrong graph. A logit moved by 1e-3 changes a softmax probability by at most
a factor e^(2e-3) (0.2% of its value), so only classes within 1e-3 in logit of each other could swap places in a
top-k. The export prints PyTorch's own float32 error next to onnxruntime's, so each file shows its margin.

With --int8, the verified float32 file is then quantized for CPUs (cnnlab.runs.quantize: calibrated on the run's
training images, checked against the float32 file on every validation image, timed against it on this CPU) and
written next to it as <file>.int8.onnx, or refused (exit 2, no int8 file; the float32 file stays, verified).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import onnx
import onnxruntime
import onnxscript
import torch

from cnnlab import __version__
from cnnlab.runs.evaluation import split_samples
from cnnlab.training.record import ONNX, ONNX_INT8
from cnnlab.runs.exported import (FORMAT_VERSION, INPUT_NAME, METADATA_KEY, OUTPUT_NAME, describe_input,
                                       open_session, sidecar_path)
from cnnlab.config import Help, check_choice
from cnnlab.data.tiles import cut_tiles, tile_positions
from cnnlab.data.transforms import normalize
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_write, write_json
from cnnlab.runs.inference import TrainedModel, open_trained
from cnnlab.runs.quantize import (ACCURACY_TOLERANCE, AGREEMENT_FLOOR, CALIBRATION_INPUTS, SPEED_BATCHES, Agreement,
                                  Speed, calibration_inputs, compare_on_split, in_turn, int8_instructions,
                                  measure_speed, quantize)
from cnnlab.runs.reader import weights_path

FORMATS = ("onnx",)
TOLERANCE = 1e-3  # largest |onnxruntime - PyTorch| logit difference / max(1, largest |logit|); see the docstring
BATCH_SIZES = (1, 2, 5)  # 1 and 5: the dynamic axis away from the traced batch (2) in both directions
VERIFY_INPUTS = max(BATCH_SIZES)


@dataclass
class Difference:
    """onnxruntime vs PyTorch on one batch."""

    batch_size: int
    max_abs: float
    """Largest |onnxruntime logit - PyTorch logit| over the batch."""
    largest_logit: float
    """Largest |PyTorch logit| of the batch."""
    float32_round_off: float
    """Largest |PyTorch float32 logit - PyTorch float64 logit|: the round-off the network has in PyTorch itself."""

    @property
    def relative(self) -> float:
        """max_abs / max(1, largest_logit): round-off grows with the logits; below 1 the absolute size counts."""
        return self.max_abs / max(1.0, self.largest_logit)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"relative": self.relative}


@dataclass
class ExportResult:
    """What `export` wrote, and how the file compared with PyTorch."""

    path: Path
    sidecar: Path
    model: str
    differences: list[Difference]
    tolerance: float
    inputs: list[str] = field(default_factory=list)  # the images the check ran on
    seconds: float = 0.0
    size_bytes: int = 0
    int8: Int8Export | None = None  # with --int8

    def describe(self) -> str:
        """Lines for the terminal: the file, the check per batch size, the verdict."""
        lines = [f"exported {self.model} to {self.path} ({self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f}s; "
                 f"metadata in its metadata_props and {self.sidecar.name}",
                 f"onnxruntime vs PyTorch on {len(self.inputs)} inputs from the run's data "
                 f"({', '.join(Path(p).name for p in self.inputs[:3])}{', ...' if len(self.inputs) > 3 else ''}):"]
        for d in self.differences:
            lines.append(f"  batch {d.batch_size}: max |difference| {d.max_abs:.2e} (PyTorch float32 vs float64: "
                         f"{d.float32_round_off:.2e}), logits up to {d.largest_logit:.3g}, relative {d.relative:.1e}")
        worst = max(d.relative for d in self.differences)
        lines.append(f"largest relative difference {worst:.1e} <= tolerance {self.tolerance:g}: the file is verified")
        if self.int8 is not None:
            lines.append(self.int8.describe(self.size_bytes))
        return "\n".join(lines)


@dataclass
class Int8Export:
    """The int8 copy `export --int8` wrote: how it was calibrated, how it compared with the float32 file on the
    validation split, and how fast both ran on this CPU."""

    path: Path
    sidecar: Path
    size_bytes: int
    calibration_inputs: int
    """Network inputs the activation ranges were measured on (images, or tiled runs' windows)."""
    calibration_images: int
    """Training images they came from."""
    agreement: Agreement
    tolerance: float
    """The largest accepted drop of validation accuracy, in percentage points."""
    speeds: list[Speed]
    instructions: list[str]
    """This CPU's int8 dot-product instructions (cnnlab.runs.quantize.INT8_INSTRUCTIONS)."""
    threads: int
    seconds: float = 0.0

    def describe(self, float_size_bytes: int) -> str:
        """Lines for the terminal: the file, its agreement with the float32 file, the speed measured here."""
        a = self.agreement
        low, high = (100 * x for x in a.interval)
        lines = [f"int8 copy {self.path} ({self.size_bytes / 1e6:.1f} MB, {float_size_bytes / self.size_bytes:.1f}x "
                 f"smaller) in {self.seconds:.1f}s; calibrated on {self.calibration_inputs} inputs from "
                 f"{self.calibration_images} training images (MinMax; QDQ, weights int8 per channel in [-64, 64], "
                 "activations uint8)",
                 f"int8 vs float32 on the {a.images} validation images: top-1 agreement {a.agreement:.1%} "
                 f"({a.same_top1}/{a.images}); accuracy {a.float_accuracy:.4f} float32, {a.int8_accuracy:.4f} int8: "
                 f"difference {100 * a.difference:+.2f} points (95% interval {low:+.2f} to {high:+.2f}; "
                 f"{a.int8_only} images only int8 got right, {a.float_only} only float32); accepted: a drop of at most "
                 f"{self.tolerance:g} points and agreement >= {AGREEMENT_FLOOR:.0%}"]
        for s in self.speeds:
            lines.append(f"  batch {s.batch_size:>2}: float32 {s.batch_size / s.float_seconds:8.1f} images/s, int8 "
                         f"{s.batch_size / s.int8_seconds:8.1f} images/s: {s.ratio:.2f}x (median of {s.repeats} runs)")
        vnni = f"yes: {', '.join(self.instructions)}" if self.instructions else "no"
        largest = self.speeds[-1]
        lines.append(f"int8 is {largest.ratio:.2f}x the speed of float32 on this CPU at batch {largest.batch_size} "
                     f"({self.threads} threads; VNNI: {vnni}); measured here, not a promise for another CPU")
        return "\n".join(lines)


def export(run_dir: str | os.PathLike, format: Annotated[str, Help("File format (onnx).")] = "onnx",
           out: Annotated[str | os.PathLike | None, Help("File to write (default: RUN_DIR/model.onnx; its metadata "
                                                         "also goes to OUT.json).")] = None,
           which: str = "best",
           data: Annotated[str | None, Help("Image folder to check the export on (default: the run's; give its new "
                                            "place if it moved).")] = None,
           tolerance: Annotated[float, Help("Largest accepted |onnxruntime - PyTorch| logit difference, relative to "
                                            "max(1, largest |logit|).")] = TOLERANCE,
           int8: Annotated[bool, Help("Also write an int8 copy for CPUs (OUT as .int8.onnx), calibrated on the run's "
                                      "training images and checked against the float32 file on its validation "
                                      "split; prints the speed-up measured here (int8 can be slower on CPUs "
                                      "without VNNI).")] = False,
           int8_tolerance: Annotated[float, Help("With --int8: the largest accepted drop of validation accuracy, in "
                                                 "percentage points.")] = ACCURACY_TOLERANCE) -> ExportResult:
    """Export a run's weights to ONNX with its classes and preprocessing, verified with onnxruntime.

    The file takes float32 (N, 3, S, S) images already resized/cropped and normalised as the run does, and gives
    logits (N, K). Before writing, onnxruntime runs it on real images of the run's data at batch sizes 1, 2 and 5;
    if its logits differ from PyTorch's by more than --tolerance (relative to the logits' scale), nothing is
    written and the exit code is 2. `cnnlab predict model.onnx IMAGES` then predicts like the run.

    With `int8`, an int8 copy is written next to it (model.int8.onnx) if it predicts like the float32 file on the
    run's validation split (see export_int8); otherwise that copy is refused with exit code 2."""
    check_choice("format", format, FORMATS)
    if tolerance < 0:
        raise CnnlabError(f"--tolerance {tolerance:g}: give a difference >= 0 (default {TOLERANCE:g})")
    if not 0 <= int8_tolerance <= 100:
        raise CnnlabError(f"--int8-tolerance {int8_tolerance:g}: give percentage points from 0 to 100 (default "
                          f"{ACCURACY_TOLERANCE:g})")
    started = time.perf_counter()
    trained = open_trained(run_dir, which, device="cpu")
    if trained.preprocessing.bags:  # the file's single output would be each tile's logits without its attention
        raise CnnlabError(f"{run_dir} is a bag run (--aggregate attention): its ONNX export (the encoder with the "
                          "attention head) is not written yet, nothing was written; predict with the run folder "
                          "(cnnlab predict RUN IMAGES) or serve it")
    # float32, NCHW: the graph a deployment runs, whatever this machine's fastest training format is
    model = trained.model.float().to(memory_format=torch.contiguous_format).eval()
    images, names = verification_inputs(trained, data)                          # (5, 3, S, S) float32
    graph = to_onnx(model, images[:2], trained.record.model)
    differences = compare(model, open_session(graph, f"the exported {trained.record.model}"), images)
    worst = max(differences, key=lambda d: d.relative)
    path = Path(out) if out is not None else Path(run_dir) / ONNX
    if worst.relative > tolerance:
        raise CnnlabError(
            f"refused: onnxruntime's logits differ from PyTorch's by {worst.max_abs:.3g} at batch size "
            f"{worst.batch_size} (relative {worst.relative:.2g}, logits up to {worst.largest_logit:.3g}; tolerance "
            f"{tolerance:g}; PyTorch's own float32 round-off: {worst.float32_round_off:.3g}), so the exported "
            f"{trained.record.model} does not compute what the run does; nothing was written to {path}. Predict with "
            "the run folder, and report the model with the torch and onnxruntime versions")
    meta = metadata(trained, which) | {"verification": {
        "tolerance": tolerance, "inputs": [Path(n).name for n in names], "batches": [d.to_dict() for d in differences]}}
    serialized = with_metadata(graph, meta)  # the checked graph; only metadata_props is added
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(serialized))
    write_json(sidecar_path(path), meta)
    result = ExportResult(path, sidecar_path(path), trained.record.model, differences, tolerance, names,
                          time.perf_counter() - started, len(serialized))
    if int8:
        int8_path = Path(run_dir) / ONNX_INT8 if out is None else path.with_suffix(".int8.onnx")
        result.int8 = export_int8(trained, serialized, meta, int8_path, path, data, int8_tolerance)
    return result


def export_int8(trained: TrainedModel, float_model: bytes, meta: dict, path: Path, float_path: Path,
                data: str | None = None, tolerance: float = ACCURACY_TOLERANCE) -> Int8Export:
    """Quantize the verified float32 file (cnnlab.runs.quantize), compare both on every validation image, and write
    the int8 file with the float32 file's metadata plus its own check and speed only if its accuracy drops by at
    most `tolerance` points and it agrees with float32 on at least AGREEMENT_FLOOR of the images; else nothing."""
    started = time.perf_counter()
    pre, name = trained.preprocessing, trained.record.model
    inputs, images = calibration_inputs(trained, data)                        # (N, 3, S, S) uint8, N <= 256
    quantized = quantize(float_model, inputs, pre.mean, pre.std, name)
    float_session = open_session(float_model, f"the exported {name}")
    int8_session = open_session(quantized, f"the int8 copy of {name}")
    agreement = compare_on_split(trained, float_session, int8_session, data)
    drop = -100 * agreement.difference
    if drop > tolerance or agreement.agreement < AGREEMENT_FLOOR:
        low, high = (100 * x for x in agreement.interval)
        raise CnnlabError(
            f"refused: the int8 copy of {name} agrees with the float32 file on {agreement.same_top1} of "
            f"{agreement.images} validation images ({agreement.agreement:.1%}; at least {AGREEMENT_FLOOR:.0%} "
            f"accepted) and changes the accuracy by {-drop:+.2f} points ({agreement.float_accuracy:.4f} -> "
            f"{agreement.int8_accuracy:.4f}, 95% interval {low:+.2f} to {high:+.2f}; a drop of at most "
            f"{tolerance:g} accepted); nothing was written to {path}"
            + (" (the one there, from an earlier export, is left as it was)" if path.exists() else "")
            + f". The float32 file {float_path} is written and verified: deploy that one"
            + (f" (a split of {agreement.images} images cannot vouch for int8: one changed image is "
               f"{1 / agreement.images:.0%})" if agreement.images < 1 / (1 - AGREEMENT_FLOOR) else ""))
    speeds = measure_speed(float_session, int8_session,
                           normalize(inputs[:max(SPEED_BATCHES)], pre.mean, pre.std).numpy())
    instructions = int8_instructions()
    threads = float_session.get_session_options().intra_op_num_threads
    int8_meta = {key: value for key, value in meta.items() if key != "verification"} | {
        "number_format": "int8",
        "float_file": float_path.name,
        "quantization": {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                         "weights": "int8, symmetric, per output channel, in [-64, 64] (reduce_range)",
                         "activations": "uint8, asymmetric", "calibration": "MinMax",
                         "calibration_split": "train", "calibration_inputs": len(inputs),
                         "calibration_images": images, "calibration_limit": CALIBRATION_INPUTS},
        "verification": {"against": float_path.name, "split": "val", **agreement.to_dict(),
                         "accuracy_tolerance_points": tolerance, "agreement_floor": AGREEMENT_FLOOR},
        "speed": {"threads": threads, "int8_instructions": instructions, "batches": [s.to_dict() for s in speeds]},
    }
    serialized = with_metadata(quantized, int8_meta)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(serialized))
    write_json(sidecar_path(path), int8_meta)
    return Int8Export(path, sidecar_path(path), len(serialized), len(inputs), images, agreement, tolerance, speeds,
                      instructions, threads, time.perf_counter() - started)


def verification_inputs(trained: TrainedModel, data: str | None = None) -> tuple[torch.Tensor, list[str]]:
    """(5, 3, S, S) float32 network inputs from real images of the run's validation split, prepared as predict
    prepares them (tiled runs: a window from the middle of each whole image), one class after another;
    repeated when the split holds fewer readable images."""
    ordered = in_turn(split_samples(trained.record, data, "val"))  # the first image of every class, the second, ...
    dataset = trained.dataset(ordered, cache="off")
    pre = trained.preprocessing
    pixels, names = [], []
    for index, sample in enumerate(ordered):
        item = dataset[index]  # None for an unreadable file (warned about once)
        if item is None:
            continue
        picture = item[0]                                                           # (3, S, S) or (3, H, W)
        if pre.tile:
            positions = tile_positions(picture.shape[1], picture.shape[2], pre.tile, pre.overlap)
            picture = cut_tiles(picture, [positions[len(positions) // 2]], pre.tile)[0]
        pixels.append(picture)
        names.append(sample.path)
        if len(pixels) == VERIFY_INPUTS:
            break
    if not pixels:
        raise CnnlabError(f"no readable image in the validation split of {trained.record.data_dir(data)} to check "
                          "the export on; pass --data with a folder of the run's classes")
    while len(pixels) < VERIFY_INPUTS:
        pixels.append(pixels[len(pixels) % len(names)])
    images = normalize(torch.stack(pixels), pre.mean, pre.std)                      # uint8 -> float32
    return images, names


def metadata(trained: TrainedModel, which: str) -> dict:
    """The JSON recorded in the file and next to it: enough to prepare images and name the classes."""
    record = trained.record
    pre = record.preprocessing
    return {
        "format_version": FORMAT_VERSION,
        "model": record.model,
        "model_options": record.model_options,
        "classes": record.classes,
        "img_size": record.img_size,
        "preprocessing": pre.to_dict(),
        "max_pixels": trained.max_pixels,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, record.img_size, record.img_size], "dtype": "float32",
                  "holds": describe_input(record.img_size, pre)},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", record.num_classes], "dtype": "float32",
                   "holds": "logits in the order of classes; softmax gives probabilities" +
                            (f"; an image's logits are the {pre.aggregate} of its tiles'" if pre.tile else "")},
        "run": str(Path(record.run_dir).resolve()),
        "weights": weights_path(record.run_dir, which).name,
        "exported_by": {"cnnlab": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                        "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__},
    }


def to_onnx(model: torch.nn.Module, example: torch.Tensor, name: str) -> bytes:
    """The model as serialized ONNX: torch.export (dynamo) with a dynamic batch axis, traced
    on `example` (2, 3, S, S) (a batch of 2: a batch of 1 would be specialised to a constant)."""
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    optimize=True, verbose=False)
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; the message names the op
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CnnlabError(f"torch.onnx.export (dynamo) could not export model '{name}': {first[:400]}") from None
    return program.model_proto.SerializeToString()


def with_metadata(serialized: bytes, meta: dict) -> bytes:
    """The ONNX bytes with metadata_props[cnnlab] = the JSON of `meta` (replacing an older entry)."""
    proto = onnx.load_from_string(serialized)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, dict(kept) | {METADATA_KEY: json.dumps(meta)})
    proto.doc_string = f"cnnlab {meta['model']}: {meta['input']['holds']} -> logits over {len(meta['classes'])} classes"
    return proto.SerializeToString()


@torch.no_grad()
def compare(model: torch.nn.Module, session, images: torch.Tensor) -> list[Difference]:
    """PyTorch's and onnxruntime's logits for the first 1, 2 and 5 inputs: the largest difference of each, and
    PyTorch's own float32 error (against the same model in float64) for scale."""
    exact = copy.deepcopy(model).double()
    differences = []
    for batch_size in BATCH_SIZES:
        x = images[:batch_size]
        expected = model(x).float().numpy()                                           # (n, K)
        reference = exact(x.double()).numpy()                                         # (n, K) float64
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if got.shape != expected.shape:
            raise CnnlabError(f"the exported model gives logits of shape {list(got.shape)} for a batch of {batch_size}, "
                              f"PyTorch {list(expected.shape)}: the batch axis did not export as dynamic")
        differences.append(Difference(batch_size, float(np.abs(got - expected).max()), float(np.abs(expected).max()),
                                      float(np.abs(expected - reference).max())))
    return differences


def show(result: ExportResult) -> None:
    """What was written and how it compared with PyTorch."""
    print(result.describe(), flush=True)
