"""cnnlab export --int8: the int8 copy is really quantized, carries the float32 file's metadata plus its own check,
predicts through `cnnlab predict`, agrees with the float32 file on the validation split (as predict scores it, tiled
runs included), records what export returned, and an int8 copy that computes something else is refused with exit 2
and no int8 file. The interval and the agreement counts are checked against known answers. No wall-clock asserts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cnnlab.commands import export as export_module
from cnnlab.commands.export import export
from cnnlab.commands.predict import predict
from cnnlab.errors import CnnlabError
from cnnlab.runs.exported import open_session, read_metadata
from cnnlab.runs.inference import open_trained
from cnnlab.runs.quantize import (ACCURACY_TOLERANCE, AGREEMENT_FLOOR, SPEED_BATCHES, Z_95, agreement_of,
                                  in_turn, measure_speed, paired_interval)

from .test_export import cnnlab, val_images  # the CLI in-process; the validation files


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """tiny_run (simple_cnn, 32 px) exported with --int8 to a folder of its own."""
    return export(tiny_run.run_dir, out=tmp_path_factory.mktemp("int8") / "simple_cnn.onnx", int8=True)


# --- the file --------------------------------------------------------------------------------------------------------
def test_the_int8_file_is_quantized_and_carries_the_float_files_metadata(exported):
    copy = exported.int8
    assert copy.path.name == "simple_cnn.int8.onnx" and copy.path.is_file()
    assert copy.sidecar.name == "simple_cnn.int8.onnx.json" and copy.sidecar.is_file()
    proto = onnx.load(copy.path)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the two convolutions' and the classifier's weights are stored as int8 (their zero points too, 1-d zeros)
    weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(weights) == 3
    for weight in weights:  # reduce_range: weights in [-64, 64], so VPMADDUBSW (x86 without VNNI) cannot saturate
        values = numpy_helper.to_array(weight)
        assert values.min() >= -64 and values.max() <= 64 and np.abs(values).max() == 64  # each channel's scale
    float_meta, int8_meta = read_metadata(exported.path), read_metadata(copy.path)
    for key in ("classes", "img_size", "preprocessing", "max_pixels", "input", "output", "model", "weights"):
        assert int8_meta[key] == float_meta[key], key
    assert int8_meta["number_format"] == "int8" and int8_meta["float_file"] == "simple_cnn.onnx"
    assert json.loads(copy.sidecar.read_text()) == int8_meta
    assert int8_meta["quantization"]["calibration_split"] == "train"
    # tiny_data's training split: 3 classes x 12 images, all of them (fewer than CALIBRATION_INPUTS)
    assert copy.calibration_inputs == copy.calibration_images == 36
    assert "int8 is" in exported.describe() and "the speed of float32 on this CPU at batch 16" in exported.describe()


def test_the_sidecar_holds_what_export_returned(exported):
    meta = json.loads(exported.int8.sidecar.read_text())
    copy = exported.int8
    assert meta["verification"] == json.loads(json.dumps(copy.agreement.to_dict())) | {
        "against": "simple_cnn.onnx", "split": "val", "accuracy_tolerance_points": ACCURACY_TOLERANCE,
        "agreement_floor": AGREEMENT_FLOOR}
    assert meta["speed"]["batches"] == [s.to_dict() for s in copy.speeds]
    assert [b["batch_size"] for b in meta["speed"]["batches"]] == list(SPEED_BATCHES) == [1, 16]
    for row in meta["speed"]["batches"]:  # consistent numbers, never their size
        assert row["repeats"] >= 5 and row["float_seconds"] > 0 and row["int8_seconds"] > 0
        assert row["ratio"] == pytest.approx(row["float_seconds"] / row["int8_seconds"])
    assert meta["speed"]["threads"] == torch.get_num_threads()
    assert meta["quantization"]["calibration_inputs"] == copy.calibration_inputs


# --- int8 against float32 --------------------------------------------------------------------------------------------
def test_int8_predicts_like_the_float_file_on_the_validation_split(exported, tiny_data):
    """The verification's numbers, recomputed through `predict` with each file: what the check measured is what
    predict does."""
    agreement = exported.int8.agreement
    print("tiny_run int8:", agreement.to_dict())
    assert agreement.images == 12
    assert agreement.agreement >= 0.99
    images = val_images(tiny_data)
    from_float = predict(exported.path, images, top_k=1, workers=0)
    from_int8 = predict(exported.int8.path, images, top_k=1, workers=0)
    truth = [Path(row["path"]).parent.name for row in from_float]
    float_top = [row["top"][0]["class"] for row in from_float]
    int8_top = [row["top"][0]["class"] for row in from_int8]
    assert np.mean([a == b for a, b in zip(float_top, int8_top)]) == agreement.agreement
    assert np.mean([a == t for a, t in zip(float_top, truth)]) == agreement.float_accuracy
    assert np.mean([a == t for a, t in zip(int8_top, truth)]) == agreement.int8_accuracy
    low, high = agreement.interval
    assert low < agreement.difference < high or low < 0 < high


def test_int8_logits_are_close_to_float32_but_not_equal(exported, tiny_run):
    """Really int8 arithmetic (the logits move by rounding), and only by rounding (a small share of their spread), on
    real validation images prepared as predict prepares them."""
    x = export_module.verification_inputs(open_trained(tiny_run.run_dir, device="cpu"))[0].numpy()  # (5, 3, 32, 32)
    (expected,) = open_session(exported.path, "float32").run(["logits"], {"images": x})
    (got,) = open_session(exported.int8.path, "int8").run(["logits"], {"images": x})
    spread = expected.max() - expected.min()
    print(f"int8 vs float32 logits: max |difference| {np.abs(got - expected).max():.3g}, spread {spread:.3g}")
    assert 0 < np.abs(got - expected).max() < 0.1 * spread


def test_cli_predict_with_the_int8_file(exported, tiny_data, monkeypatch, capsys):
    folder = tiny_data / "val" / "square"
    code, out, errors = cnnlab(monkeypatch, capsys, "predict", exported.int8.path, folder, "--top-k", "2")
    assert code == 0, errors
    lines = out.splitlines()
    rows = predict(exported.int8.path, sorted(folder.glob("*.jpg")), top_k=2, workers=0)
    assert len(lines) == len(rows) == 4
    for line, row in zip(lines, rows):  # `path: class p, class p`, the classes the API gives
        path, top = line.split(": ")
        assert path == row["path"] and [t.split()[0] for t in top.split(", ")] == [t["class"] for t in row["top"]]


def test_tiled_run_int8_is_checked_on_whole_images_by_the_sliding_window(tiny_tiled_run, tiny_data, tmp_path):
    result = export(tiny_tiled_run.run_dir, out=tmp_path / "tiled.onnx", int8=True)
    copy = result.int8
    # 36 training images of 3 x 3 windows: 8 windows each (ceil(256 / 36)) until 256 inputs, from 32 images
    assert copy.calibration_inputs == 256 and copy.calibration_images == 32
    assert copy.agreement.images == 12  # whole validation images, each its windows pooled, not 108 windows
    assert copy.agreement.agreement >= 0.99, copy.agreement
    images = val_images(tiny_data)
    from_float = predict(result.path, images, top_k=1, workers=0)
    from_int8 = predict(copy.path, images, top_k=1, workers=0)
    same = np.mean([a["top"][0]["class"] == b["top"][0]["class"] for a, b in zip(from_float, from_int8)])
    assert same == copy.agreement.agreement


# --- refusals ------------------------------------------------------------------------------------------------------
def test_an_int8_copy_that_computes_something_else_is_refused(tiny_run, tmp_path, monkeypatch, capsys):
    """The quantizer is handed a graph whose classifier is negated (top-1 becomes the least likely class): the check
    must catch it, write no int8 file, and leave the verified float32 file."""
    real_quantize = export_module.quantize

    def wrong_quantize(float_model, inputs, mean, std, name):
        proto = onnx.load_from_string(float_model)
        gemm = next(node for node in proto.graph.node if node.op_type == "Gemm")
        for initializer in proto.graph.initializer:
            if initializer.name in gemm.input[1:]:
                initializer.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(initializer), initializer.name))
        return real_quantize(proto.SerializeToString(), inputs, mean, std, name)

    monkeypatch.setattr(export_module, "quantize", wrong_quantize)
    code, _, error = cnnlab(monkeypatch, capsys, "export", tiny_run.run_dir, "--int8", "--out", tmp_path / "m.onnx")
    assert code == 2 and len(error.splitlines()) == 1 and "Traceback" not in error
    assert error.startswith("error: refused: the int8 copy of simple_cnn agrees with the float32 file on ")
    assert f"nothing was written to {tmp_path / 'm.int8.onnx'}" in error
    assert f"The float32 file {tmp_path / 'm.onnx'} is written and verified" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no int8 file, no temporary


def test_int8_tolerance_outside_0_to_100_is_a_clear_error(tiny_run, tmp_path):
    with pytest.raises(CnnlabError, match=r"--int8-tolerance -1: give percentage points from 0 to 100"):
        export(tiny_run.run_dir, out=tmp_path / "m.onnx", int8=True, int8_tolerance=-1)
    assert list(tmp_path.iterdir()) == []


def test_cli_defaults_match_the_api():
    from typer.main import get_command

    from cnnlab.cli import app

    params = {p.name: p for p in get_command(app).commands["export"].params}
    assert params["int8"].default is False and params["int8_tolerance"].default == ACCURACY_TOLERANCE == 1.0


# --- the statistics, against known answers -----------------------------------------------------------------------------
def test_paired_interval_known_answers():
    # nothing changed on 12 images: +-z / (n + 2), not [0, 0]
    assert paired_interval(0, 0, 12) == pytest.approx((-Z_95 / 14, Z_95 / 14))
    # by hand: b = 3.5, c = 1.5, m = 22: centre 2/22, half 1.96 * sqrt(5 - 4/22) / 22
    assert paired_interval(3, 1, 20) == pytest.approx((2 / 22 - Z_95 * math.sqrt(5 - 4 / 22) / 22,
                                                       2 / 22 + Z_95 * math.sqrt(5 - 4 / 22) / 22))
    assert paired_interval(3, 1, 20) == pytest.approx((-0.1047, 0.2865), abs=1e-4)
    # many images: the plain paired normal interval
    b, c, n = 300, 200, 10_000
    wald = Z_95 * math.sqrt(b + c - (b - c) ** 2 / n) / n
    assert paired_interval(b, c, n) == pytest.approx(((b - c) / n - wald, (b - c) / n + wald), abs=2e-4)
    # antisymmetric, and bounded by [-1, 1]
    low, high = paired_interval(1, 4, 9)
    assert paired_interval(4, 1, 9) == pytest.approx((-high, -low))
    assert paired_interval(3, 0, 3)[1] <= 1.0


def test_agreement_counts_known_answer():
    labels = torch.tensor([0, 1, 2, 0, 2])
    float_logits = torch.eye(3)[[0, 1, 0, 0, 1]]  # top-1: 0 1 0 0 1 -> right on 0, 1, 3
    int8_logits = torch.eye(3)[[0, 1, 2, 1, 1]]   # top-1: 0 1 2 1 1 -> right on 0, 1, 2
    a = agreement_of(float_logits, int8_logits, labels)
    assert (a.images, a.same_top1, a.float_correct, a.int8_correct, a.int8_only, a.float_only) == (5, 3, 3, 3, 1, 1)
    assert a.agreement == 0.6 and a.difference == 0 and a.interval == paired_interval(1, 1, 5)


def test_in_turn_takes_the_classes_in_turn(tiny_data):
    from cnnlab.data.folders import find_samples

    samples = find_samples(tiny_data).splits["train"]
    ordered = in_turn(samples)
    assert [s.label for s in ordered[:6]] == [0, 1, 2, 0, 1, 2] and sorted(ordered, key=id) == sorted(samples, key=id)
    shuffled = in_turn(samples, seed=3)
    assert [s.label for s in shuffled[:6]] == [0, 1, 2, 0, 1, 2] and shuffled != ordered
    assert in_turn(samples, seed=3) == shuffled  # the seed decides


def test_measure_speed_times_both_sessions_at_each_batch_size(exported, monkeypatch):
    monkeypatch.setattr("cnnlab.runs.quantize.SPEED_SECONDS", 0.0)
    float_session, int8_session = open_session(exported.path, "f"), open_session(exported.int8.path, "i")
    speeds = measure_speed(float_session, int8_session, np.zeros((3, 3, 32, 32), np.float32), (1, 4))
    assert [s.batch_size for s in speeds] == [1, 4] and all(s.repeats == 5 for s in speeds)
    assert all(s.float_seconds > 0 and s.int8_seconds > 0 for s in speeds)
