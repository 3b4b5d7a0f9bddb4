"""Shared fixtures: a tiny built-in dataset and one short training run, made once per session."""

from __future__ import annotations

import os

import pytest

# Keep every test offline and quiet: no hub downloads, a private cache folder per session.
os.environ.setdefault("TORCH_HOME", "/nonexistent-torch-home")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 classes x 16 images of 64 px, split 12/4 per class."""
    from cnnlab.data.synth import synthesize

    root = tmp_path_factory.mktemp("tiny-data")
    synthesize(root / "shapes", classes=3, per_class=16, size=64, seed=0, val_fraction=0.25)
    return root / "shapes"


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A 2-epoch simple_cnn run at 32 px on tiny_data (returns the TrainResult)."""
    from cnnlab.commands.train import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return fit(data=str(tiny_data), img_size=32, epochs=2, batch_size=8, workers=0, out=str(out),
               model="simple_cnn", model_options={"widths": [8, 16]}, cache="off", verbose=False)


@pytest.fixture(scope="session")
def tiny_tiled_run(tiny_data, tmp_path_factory):
    """A 1-epoch simple_cnn run on 32 px tiles of tiny_data's 64 px images at scale 1 (3x3 windows per image)."""
    from cnnlab.commands.train import fit

    out = tmp_path_factory.mktemp("runs") / "tiled"
    return fit(data=str(tiny_data), tile=32, scale=1.0, epochs=1, batch_size=8, workers=0, out=str(out),
               model="simple_cnn", model_options={"widths": [8, 16]}, cache="off", verbose=False)


@pytest.fixture(scope="session")
def tiny_eval(tiny_run):
    """evaluate() of tiny_run on its 12 validation images (writes eval_val.json, plots, report.html)."""
    from cnnlab.commands.evaluate import evaluate

    return evaluate(tiny_run.run_dir, split="val", workers=0, verbose=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: on a shared 2-core machine spinning OpenMP threads
    waste most of the CPU, and forked children then never touch the parent's thread pool."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
