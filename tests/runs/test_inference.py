"""One image, one answer: a run folder (with its decode cache or without), its exported ONNX file, serve's upload
predictor and evaluation give a file the same probabilities, whether it is predicted alone or among others, and
whatever precision the machine would train in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.commands.evaluate import evaluate
from cnnlab.commands.export import export
from cnnlab.commands.predict import predict
from cnnlab.commands.train import fit
from cnnlab.serve.predictor import UploadPredictor
from cnnlab.data.cache import open_cache
from cnnlab.data.images import read_at, read_image
from cnnlab.runs.inference import open_trained
from cnnlab.training import device as device_module

TOLERANCE = 1e-5  # float32 round-off of the same network on the same pixels is ~1e-7 (tests/commands/test_export.py)


@pytest.fixture(scope="module")
def cached_run(tiny_data, tmp_path_factory):
    """A run trained with a disk cache of its own: 64 px images decoded at 37 px (crops of 32), so a reader that
    skipped the cache's resize would see other pixels."""
    root = tmp_path_factory.mktemp("one-answer")
    result = fit(data=str(tiny_data), img_size=32, epochs=1, batch_size=8, workers=0, out=str(root / "run"),
                 model="simple_cnn", model_options={"widths": [8, 16]}, cache="disk",
                 cache_dir=str(root / "cache"), precision="fp32", verbose=False)
    return result, export(result.run_dir, out=root / "model.onnx")


def probabilities(rows: list[dict], classes: list[str]) -> dict[str, np.ndarray]:
    """{path: (K,) probabilities in class order} from predict's rows (top-k = every class)."""
    found = {}
    for row in rows:
        assert "top" in row, row
        values = dict((t["class"], t["probability"]) for t in row["top"])
        found[row["path"]] = np.array([values[c] for c in classes])
    return found


def test_read_at_gives_the_cached_pixels(cached_run, tiny_data):
    result, _ = cached_run
    paths = sorted(str(p) for p in tiny_data.rglob("*.jpg"))
    cache = open_cache(paths, 37, "disk", cache_dir=result.run_dir.parent / "cache", one_pass=True, verbose=False)
    assert cache is not None  # the run built it
    for index in (0, 7, len(paths) - 1):
        from_file = read_at(paths[index], 37)
        assert min(from_file.shape[1:]) == 37
        assert torch.equal(cache.load(index), from_file)
        # what the file alone gives without the exact resize is other pixels: the cache's resize matters
        assert read_image(paths[index], min_size=37).shape != from_file.shape


def test_run_onnx_serve_and_eval_agree_for_a_file_alone_or_among_others(cached_run, tiny_data):
    result, exported = cached_run
    trained = open_trained(result.run_dir)
    classes = trained.record.classes
    everything = sorted(tiny_data.rglob("*.jpg"))  # inside the run's data folder: its cache covers them
    one = everything[5]
    together = probabilities(predict(result.run_dir, everything, top_k=3, workers=0), classes)
    alone = probabilities(predict(result.run_dir, [one], top_k=3, workers=0, cache="off"), classes)
    from_onnx = probabilities(predict(exported.path, everything, top_k=3, workers=0), classes)
    predictor = UploadPredictor(trained)
    served = predictor.predict(one.read_bytes(), one.name, top_k=3).top
    served = np.array([dict((t["class"], t["probability"]) for t in served)[c] for c in classes])
    evaluation = evaluate(result.run_dir, split="val", workers=0, verbose=False)

    assert np.abs(together[str(one)] - alone[str(one)]).max() <= TOLERANCE
    assert np.abs(together[str(one)] - served).max() <= TOLERANCE
    for path, value in together.items():
        assert np.abs(value - from_onnx[path]).max() <= TOLERANCE, path
    for path, value in zip(evaluation.paths, evaluation.probabilities):
        assert np.abs(value - together[path]).max() <= TOLERANCE, path


def test_a_machine_that_trains_in_bf16_still_predicts_in_float32(cached_run, tiny_data, monkeypatch):
    """On a CPU with AVX-512 BF16/AMX `--precision auto` trains in bf16; prediction must still be float32, or the
    run and its (float32) ONNX file disagree by points."""
    result, exported = cached_run
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda: True)
    assert device_module.resolve_precision("auto", torch.device("cpu")).name == "bf16"  # the other kind of machine
    trained = open_trained(result.run_dir)
    assert trained.pipeline.precision.name == "fp32"
    images = sorted((tiny_data / "val").rglob("*.jpg"))
    classes = trained.record.classes
    from_run = probabilities(predict(result.run_dir, images, top_k=3, workers=0), classes)
    from_onnx = probabilities(predict(exported.path, images, top_k=3, workers=0), classes)
    for path, value in from_run.items():
        assert np.abs(value - from_onnx[path]).max() <= TOLERANCE, path
