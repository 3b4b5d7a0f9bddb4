"""cnnlab export: the ONNX file computes what the run computes (onnxruntime vs PyTorch at batch sizes 1, 2, 5), carries
the run's classes and preprocessing, predicts the run's top-k through `cnnlab predict model.onnx`, a wrong graph is
refused with nothing left behind, and every registered model exports."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cnnlab.cli import main
from cnnlab.commands import export as export_module
from cnnlab.commands.export import BATCH_SIZES, TOLERANCE, compare, export, to_onnx
from cnnlab.runs.exported import METADATA_KEY, open_onnx, open_session, read_metadata
from cnnlab.commands.predict import predict
from cnnlab.commands.train import fit
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models


def cnnlab(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The CLI's entry point in this process (no second torch import): exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["cnnlab", *map(str, args)])
    with pytest.raises(SystemExit) as stopped:
        main()
    captured = capsys.readouterr()
    return stopped.value.code or 0, captured.out, captured.err


def val_images(data: Path) -> list[Path]:
    return sorted((data / "val").rglob("*.jpg"))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """tiny_run (simple_cnn, 32 px) exported to a folder of its own."""
    return export(tiny_run.run_dir, out=tmp_path_factory.mktemp("export") / "simple_cnn.onnx")


@pytest.fixture(scope="module")
def resnet18_run(tiny_data, tmp_path_factory):
    """resnet18 (random init, 1 epoch) on tiny_data at 32 px."""
    return fit(data=str(tiny_data), img_size=32, epochs=1, batch_size=8, workers=0, model="resnet18", cache="off",
               out=str(tmp_path_factory.mktemp("runs") / "resnet18"), verbose=False)


# --- onnxruntime vs PyTorch ------------------------------------------------------------------------------------------
def _check_differences(result, name: str) -> None:
    assert [d.batch_size for d in result.differences] == list(BATCH_SIZES) == [1, 2, 5]
    for d in result.differences:
        assert d.relative <= TOLERANCE, d
        assert d.relative == d.max_abs / max(1.0, d.largest_logit)
        assert d.largest_logit > 0 and d.float32_round_off >= 0
    print(name, [(d.batch_size, f"{d.max_abs:.2e}", f"{d.relative:.1e}", f"fp32 {d.float32_round_off:.1e}")
                 for d in result.differences])


def test_simple_cnn_export_matches_pytorch_at_three_batch_sizes(exported):
    _check_differences(exported, "simple_cnn")
    assert exported.path.name == "simple_cnn.onnx" and exported.path.is_file()
    assert len(exported.inputs) == 5 and all(Path(p).is_file() for p in exported.inputs)
    # real validation images, one class after another
    assert [Path(p).parent.name for p in exported.inputs[:4]] == ["circle", "square", "triangle", "circle"]
    assert all("/val/" in p for p in exported.inputs)
    assert "the file is verified" in exported.describe()


@pytest.mark.slow
def test_resnet18_export_matches_pytorch_at_three_batch_sizes(resnet18_run, tmp_path):
    result = export(resnet18_run.run_dir, out=tmp_path / "resnet18.onnx")
    _check_differences(result, "resnet18")
    # the file on disk, not just the checked bytes: same logits as the model at a batch size never traced (7)
    from cnnlab.runs.reader import load_model

    model, _ = load_model(resnet18_run.run_dir)
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = open_session(result.path, "resnet18").run(["logits"], {"images": x.numpy()})
    assert got.shape == (7, 3)
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())


def test_the_file_describes_itself(exported, tiny_run):
    proto = onnx.load(exported.path)
    graph_input = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == "images" and proto.graph.output[0].name == "logits"
    assert [d.dim_param or d.dim_value for d in graph_input] == ["batch", 3, 32, 32]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["batch", 3]
    embedded = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert embedded == json.loads(exported.sidecar.read_text()) and exported.sidecar.name == "simple_cnn.onnx.json"
    run_meta = json.loads((tiny_run.run_dir / "model.json").read_text())
    assert embedded["classes"] == json.loads((tiny_run.run_dir / "classes.json").read_text())
    assert embedded["preprocessing"] == run_meta["preprocessing"]
    assert embedded["preprocessing"]["resize_short_side"] == embedded["preprocessing"]["center_crop"] == 32
    assert embedded["img_size"] == 32 and embedded["max_pixels"] == 200_000_000 and embedded["weights"] == "best.safetensors"
    assert "minus mean [0.485, 0.456, 0.406]" in embedded["input"]["holds"]
    assert [b["batch_size"] for b in embedded["verification"]["batches"]] == [1, 2, 5]
    # opened without the run folder: the same classes and preprocessing
    shutil.copy(exported.path, Path(exported.path).parent / "alone.onnx")  # no sidecar next to this copy
    trained = open_onnx(Path(exported.path).parent / "alone.onnx")
    assert trained.record.classes == embedded["classes"] and trained.preprocessing.center_crop == 32


# --- predict with the file -------------------------------------------------------------------------------------------
def test_predict_with_the_file_gives_the_runs_top_k(exported, tiny_run, tiny_data):
    images = val_images(tiny_data)
    from_run = predict(tiny_run.run_dir, images, top_k=3, workers=0)
    from_file = predict(exported.path, images, top_k=3, workers=0)
    assert len(from_file) == len(images) == 12
    for a, b in zip(from_run, from_file):
        assert a["path"] == b["path"]
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=2e-6)


def test_cli_predict_with_the_file_prints_what_the_run_prints(exported, tiny_run, tiny_data, monkeypatch, capsys):
    folder = tiny_data / "val" / "circle"
    code_run, from_run, _ = cnnlab(monkeypatch, capsys, "predict", tiny_run.run_dir, folder, "--top-k", "2")
    code_file, from_file, errors = cnnlab(monkeypatch, capsys, "predict", exported.path, folder, "--top-k", "2")
    assert code_run == code_file == 0, errors
    assert from_file == from_run and len(from_file.splitlines()) == 4


def test_tiled_run_exports_its_tiles_and_predicts_by_the_same_window(tiny_tiled_run, tiny_data, tmp_path):
    result = export(tiny_tiled_run.run_dir, out=tmp_path / "tiled.onnx")
    _check_differences(result, "tiled simple_cnn")
    meta = read_metadata(result.path)
    assert meta["preprocessing"]["tile"] == 32 and meta["preprocessing"]["scale"] == 1.0
    assert "tiles of 32 px cut from the whole image at pixel scale 1" in meta["input"]["holds"]
    images = val_images(tiny_data)[:6]
    from_run = predict(tiny_tiled_run.run_dir, images, top_k=2, workers=0)
    from_file = predict(result.path, images, top_k=2, workers=0)
    for a, b in zip(from_run, from_file):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=2e-6)


# --- refusals and errors ------------------------------------------------------------------------------------------------
def _left_behind(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_wrong_graph_is_refused_with_exit_2_and_no_file(tiny_run, tmp_path, monkeypatch, capsys):
    """The exporter is made to export a model whose last layer was changed: the check must catch it."""
    real_to_onnx = export_module.to_onnx

    def wrong_graph(model, example, name):
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.classifier().weight.mul_(1.5)  # one layer off: what a mistranslated op would do
        return real_to_onnx(broken, example, name)

    monkeypatch.setattr(export_module, "to_onnx", wrong_graph)
    code, _, error = cnnlab(monkeypatch, capsys, "export", tiny_run.run_dir, "--out", tmp_path / "m.onnx")
    assert code == 2
    assert error.startswith("error: refused: onnxruntime's logits differ from PyTorch's") and "Traceback" not in error
    assert f"nothing was written to {tmp_path / 'm.onnx'}" in error
    assert _left_behind(tmp_path) == []  # neither the file, nor its .json, nor a temporary
    relative = float(error.split("(relative ")[1].split(",")[0])
    print(f"a 1.5x last layer: relative difference {relative}")
    assert relative > 10 * TOLERANCE  # a real error is far above the tolerance, not near it


def test_tolerance_zero_refuses_and_leaves_nothing(exported, tiny_run, tmp_path, monkeypatch, capsys):
    if max(d.max_abs for d in exported.differences) == 0:
        pytest.skip("onnxruntime matched PyTorch bit for bit on this machine: tolerance 0 accepts it")
    code, _, error = cnnlab(monkeypatch, capsys, "export", tiny_run.run_dir, "--tolerance", "0",
                            "--out", tmp_path / "m.onnx")
    assert code == 2 and error.startswith("error: refused") and "tolerance 0;" in error
    assert _left_behind(tmp_path) == []


def test_a_run_without_weights_is_a_clear_error(tiny_run, tmp_path, monkeypatch, capsys):
    run = shutil.copytree(tiny_run.run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("*.safetensors"))
    code, _, error = cnnlab(monkeypatch, capsys, "export", run)
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith(f"error: run folder {run} has no weights (best.safetensors)")
    assert not (run / "model.onnx").exists()


def test_an_onnx_file_without_cnnlab_metadata_is_a_clear_error(tiny_data, tmp_path, monkeypatch, capsys):
    model = create_model("simple_cnn", num_classes=3, widths=[8]).eval()
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(tmp_path / "plain.onnx"), dynamo=True,
                      input_names=["images"], output_names=["logits"], verbose=False)
    code, _, error = cnnlab(monkeypatch, capsys, "predict", tmp_path / "plain.onnx", val_images(tiny_data)[0])
    assert code == 2 and len(error.splitlines()) == 1
    assert "plain.onnx has no cnnlab metadata" in error and "cnnlab export RUN" in error
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(CnnlabError, match="text.onnx is not an ONNX model onnxruntime can load"):
        open_onnx(tmp_path / "text.onnx")
    with pytest.raises(CnnlabError, match="missing.onnx does not exist"):
        open_onnx(tmp_path / "missing.onnx")


def test_unknown_format_and_cli_default():
    with pytest.raises(CnnlabError, match="format"):
        export("anything", format="tflite")
    from typer.main import get_command

    from cnnlab.cli import app

    params = {p.name: p for p in get_command(app).commands["export"].params}
    assert params["tolerance"].default == TOLERANCE and params["format"].default == "onnx"


# --- every registered model ------------------------------------------------------------------------------------------
# and resnet9 as tiled runs build it (max-and-average pooling: cnnlab.models.registry.tiled_options)
# The zoo's large networks take 15-25 s each on 2 cores: the fast tier exports the small ones (its own models).
FAST_EXPORTS = ("simple_cnn", "mlp", "resnet9")


@pytest.mark.parametrize("name, options", [pytest.param(name, {}, id=name, marks=() if name in FAST_EXPORTS
                                                        else pytest.mark.slow) for name in list_models()]
                         + [pytest.param("resnet9", {"pool": "avgmax"}, id="resnet9-avgmax")])
def test_every_registered_model_exports(name, options, one_torch_thread):
    """Random weights, BatchNorm statistics from 16 random 32 px images (with the default statistics ReLU6 saturates
    and mobilenet's logits are one constant, which a wrong graph would match too), compared at 1, 2 and 5."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, img_size=32, **options)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: the statistics of exactly these images
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    model.eval()
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
    assert (logits - logits[0]).abs().max() > 1e-3  # the logits depend on the input: the comparison means something
    differences = compare(model, open_session(to_onnx(model, images[:2], name), name), images)
    print(name, " ".join(f"batch {d.batch_size}: {d.max_abs:.2e} (relative {d.relative:.1e}, PyTorch fp32 vs fp64 "
                         f"{d.float32_round_off:.1e})" for d in differences))
    assert [d.batch_size for d in differences] == [1, 2, 5]
    assert all(d.relative <= TOLERANCE for d in differences), differences
