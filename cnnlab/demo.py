"""The demo `make demo` runs: the built-in dataset, a simple_cnn, its evaluation and a summary."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from platformdirs import user_cache_dir

from cnnlab.config import TrainConfig
from cnnlab.evaluate import evaluate
from cnnlab.synth import synthesize
from cnnlab.train import TrainResult, fit

# The built-in dataset: 6 shape classes, 100 large (1024 px) images each.
DEMO_SYNTH = {"classes": 6, "per_class": 100, "size": 1024, "seed": 0}
# Chosen so the demo reaches >= 0.95 validation accuracy in about 3 minutes on 2 CPU cores.
DEMO_TRAIN = {"model": "simple_cnn", "img_size": 128, "epochs": 10, "batch_size": 32}


def default_data_dir() -> Path:
    """Where the built-in dataset is kept between demos ($CNNLAB_CACHE or the user's cache dir)."""
    root = os.environ.get("CNNLAB_CACHE") or user_cache_dir("cnnlab")
    return Path(root) / "datasets" / "shapes-{classes}x{per_class}-{size}px-seed{seed}".format(**DEMO_SYNTH)


def demo(data: str | None = None, out: str = "runs/demo", epochs: int | None = None) -> TrainResult:
    """Synthesise the built-in dataset if absent, train simple_cnn, evaluate it, return the result."""
    start = time.perf_counter()
    data_dir = Path(data) if data else default_data_dir()
    summary = synthesize(data_dir, **DEMO_SYNTH)
    print(summary.describe(), file=sys.stderr)
    options = DEMO_TRAIN | ({"epochs": epochs} if epochs else {})
    result = fit(TrainConfig(data=str(data_dir), out=out, **options))
    evaluation = evaluate(result.run_dir, split="val")
    result.extras["evaluation"] = evaluation
    result.extras["seconds"] = time.perf_counter() - start
    return result
