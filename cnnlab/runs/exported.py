"""An exported ONNX file: the cnnlab metadata it carries, and the file opened with onnxruntime as a TrainedModel.

`cnnlab export` writes the network as it runs at inference, nothing more:

    input   "images"  float32 (N, 3, S, S): RGB, resized and centre-cropped (or a tile cut at the run's pixel
                      scale) exactly as `preprocessing` says, scaled to 0..1, minus `mean`, divided by `std`
    output  "logits"  float32 (N, K): class scores in the order of `classes` (softmax gives probabilities)

N is a dynamic axis. Everything a reader needs to prepare images and name the classes is one JSON object in
the file's metadata_props under "cnnlab" (and the same JSON next to it in <file>.json, for people and other
tools). `open_onnx` wraps the file in the TrainedModel that `cnnlab predict` already uses for a run folder, so
images go through the same code (read_image with the pixel cap, eval_transform or the sliding window of
cnnlab.data.tiles, normalize) and only the network itself is onnxruntime's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.transforms import Preprocessing
from cnnlab.errors import CnnlabError
from cnnlab.runs.inference import TrainedModel
from cnnlab.runs.reader import RunRecord
from cnnlab.training.device import Precision
from cnnlab.training.forward import InputPipeline

METADATA_KEY = "cnnlab"  # the metadata_props entry holding the JSON below
FORMAT_VERSION = 1  # bumped when a reader could misread an older file
INPUT_NAME, OUTPUT_NAME = "images", "logits"
_REQUIRED = ("format_version", "model", "classes", "img_size", "preprocessing", "max_pixels")


def is_onnx_file(path: str | os.PathLike) -> bool:
    """True for a path named *.onnx (cnnlab predict then runs the file instead of a run folder)."""
    return Path(path).suffix.lower() == ".onnx"


def sidecar_path(path: str | os.PathLike) -> Path:
    """<file>.json: the metadata next to the model file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def describe_input(img_size: int, preprocessing: Preprocessing) -> str:
    """One sentence on what the network's input holds (written into the metadata)."""
    if preprocessing.tile:
        where = (f"tiles of {preprocessing.tile} px cut from the whole image at pixel scale {preprocessing.scale:g} "
                 f"(a sliding window, overlap {preprocessing.overlap:g}; the image's logits are the {preprocessing.aggregate} "
                 "of its tiles' logits)")
    else:
        where = (f"the image's short side resized to {preprocessing.resize_short_side} px (antialiased), then its centre "
                 f"{preprocessing.center_crop} x {preprocessing.center_crop} px")
    return (f"float32 (N, 3, {img_size}, {img_size}), RGB, {where}, scaled to 0..1, minus mean {list(preprocessing.mean)}, "
            f"divided by std {list(preprocessing.std)}")


def session_options():
    """onnxruntime settings: as many threads as torch uses (so --workers, tests and benchmarks control both)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return options


def open_session(model: str | os.PathLike | bytes, name: str):
    """An onnxruntime session on the CPU for a file or serialized bytes; a clear error if it is no ONNX model."""
    import onnxruntime

    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return onnxruntime.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CnnlabError(f"{name} is not an ONNX model onnxruntime can load ({first[:300]}); export one with "
                          "`cnnlab export RUN`") from None


def read_metadata(path: str | os.PathLike, session=None) -> dict:
    """The cnnlab metadata of an exported file: its own metadata_props, else <file>.json next to it."""
    path = Path(path)
    session = session or open_session(path, str(path))
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    source = f"{path} (metadata_props '{METADATA_KEY}')"
    if text is None and sidecar_path(path).is_file():
        text, source = sidecar_path(path).read_text(encoding="utf-8"), str(sidecar_path(path))
    if text is None:
        raise CnnlabError(f"{path} has no cnnlab metadata (no metadata_props '{METADATA_KEY}' and no "
                          f"{sidecar_path(path).name} next to it), so its classes and preprocessing are unknown; "
                          "export the run with `cnnlab export RUN`, or predict with the run folder")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise CnnlabError(f"the cnnlab metadata in {source} is not valid JSON ({error})") from None
    missing = [key for key in _REQUIRED if key not in meta] if isinstance(meta, dict) else list(_REQUIRED)
    if missing:
        raise CnnlabError(f"the cnnlab metadata in {source} lacks {', '.join(missing)}; export the run again")
    if meta["format_version"] > FORMAT_VERSION:
        raise CnnlabError(f"{path} was exported by a newer cnnlab (format {meta['format_version']}, this one reads "
                          f"up to {FORMAT_VERSION}); update cnnlab")
    return meta


class OnnxClassifier(nn.Module):
    """An onnxruntime session behind the nn.Module interface the inference code calls: forward(x) with
    x float32 (N, 3, S, S) normalised -> logits (N, K) float32 on the CPU. No gradients (no Grad-CAM)."""

    def __init__(self, session, path: str):
        super().__init__()
        self.session = session
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NCHW, C-contiguous: the pipeline may hand over channels_last, which onnxruntime would copy anyway
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)

    def stage_modules(self) -> list:
        return []  # no feature maps to hook: Grad-CAM and inspect need the run folder

    def extra_repr(self) -> str:
        return self.path


def open_onnx(path: str | os.PathLike) -> TrainedModel:
    """An exported file as a TrainedModel: onnxruntime computes the logits, cnnlab prepares the images exactly
    as the run did (its preprocessing and pixel cap, from the file's metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"{path} does not exist; give a file written by `cnnlab export RUN`")
    session = open_session(path, str(path))
    meta = read_metadata(path, session)
    img_size = int(meta["img_size"])
    preprocessing = Preprocessing.from_dict(meta["preprocessing"], img_size)
    shape = session.get_inputs()[0].shape  # ['batch', 3, S, S]
    if [session.get_inputs()[0].name, *shape[1:]] != [INPUT_NAME, 3, img_size, img_size]:
        raise CnnlabError(f"{path} takes input {session.get_inputs()[0].name} {shape}, not the "
                          f"{INPUT_NAME} [batch, 3, {img_size}, {img_size}] its metadata describes; export the run again")
    record = RunRecord(path.parent, None, meta["model"], dict(meta.get("model_options", {})), list(meta["classes"]),
                       img_size, preprocessing, {})
    # fp32 in NCHW: the graph's own number format; onnxruntime picks its kernels
    pipeline = InputPipeline(torch.device("cpu"), Precision("fp32", None, False), mean=preprocessing.mean,
                             std=preprocessing.std)
    return TrainedModel(OnnxClassifier(session, str(path)), record, pipeline, which="onnx",
                        pixel_cap=int(meta["max_pixels"]))
