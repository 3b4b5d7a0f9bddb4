"""The demo `make demo` runs: the built-in dataset, a simple_cnn, its evaluation and a summary."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

from dataclasses import dataclass

from platformdirs import user_cache_dir

from cnnlab.commands.train import TrainResult, fit
from cnnlab.config import Help, TrainConfig
from cnnlab.data.synth import GENERATOR_VERSION, synthesize
from cnnlab.errors import CnnlabError
from cnnlab.training.record import REPORT
from cnnlab.runs.reader import read_run

# The built-in dataset: 6 shape classes, 300 large (1024 px) photos-to-be each. 300 rather than the
# synth default of 100: with 80 training images per class the network memorises the backgrounds
# before it generalises (val accuracy stalls near 0.85); with 240 it reaches >= 0.95.
DEMO_SYNTH = {"classes": 6, "per_class": 300, "size": 1024, "seed": 0, "workers": 2}
# Chosen so that the demo reaches >= 0.95 validation accuracy in about 3 minutes on 2 CPU cores:
# the images are decoded once into the cache at 74 px, and a narrow simple_cnn at 64 px trains at a
# few hundred images/s. Dropout 0.2: the augmentation already regularises, 0.5 slows learning here.
DEMO_TRAIN = {"model": "simple_cnn", "img_size": 64, "epochs": 20, "batch_size": 32, "dropout": 0.2,
              "lr": 3e-3, "model_options": {"widths": [16, 32, 64, 128]}}


def default_data_dir() -> Path:
    """Where the built-in dataset is kept between demos ($CNNLAB_CACHE or the user's cache dir)."""
    root = os.environ.get("CNNLAB_CACHE") or user_cache_dir("cnnlab")
    name = "shapes-v{version}-{classes}x{per_class}-{size}px-seed{seed}".format(version=GENERATOR_VERSION, **DEMO_SYNTH)
    return Path(root) / "datasets" / name


@dataclass
class DemoResult:
    """The demo's training run (with its evaluation of the validation split) and how long it all took."""

    train: TrainResult
    seconds: float


def _is_demo_run(run_dir: Path, data_dir: Path) -> bool:
    """True if `run_dir` holds a run trained on the demo's own dataset (a previous `make demo`)."""
    try:
        record = read_run(run_dir)
    except CnnlabError:
        return False
    return record.config is not None and Path(record.config.data) == data_dir.absolute()


def demo(data: Annotated[str | None, Help("Where to keep the built-in dataset (default: user cache).")] = None,
         out: Annotated[str, Help("Run folder (a previous demo run there is replaced).")] = "runs/demo",
         epochs: Annotated[int | None, Help("Override the demo's number of epochs.")] = None) -> DemoResult:
    """Synthesise the built-in dataset if absent, train, evaluate, summarise.

    Trains simple_cnn (which evaluates its validation split) and returns the result. A previous demo run in `out`
    is replaced; any other run there is refused."""
    start = time.perf_counter()
    data_dir = (Path(data) if data else default_data_dir()).absolute()
    summary = synthesize(data_dir, **DEMO_SYNTH)
    print(summary.describe(), file=sys.stderr)
    options = DEMO_TRAIN | ({"epochs": epochs} if epochs else {})
    result = fit(TrainConfig(data=str(data_dir), out=out, **options), overwrite=_is_demo_run(Path(out), data_dir))
    return DemoResult(result, time.perf_counter() - start)


def show(result: DemoResult) -> None:
    """The run's summary, the evaluation table and where the report is."""
    print(result.train.summary(), flush=True)
    if result.train.evaluation is not None:
        print(result.train.evaluation.describe(), flush=True)
    print(f"demo finished in {result.seconds:.0f}s; open {result.train.run_dir / REPORT} to see everything", flush=True)
