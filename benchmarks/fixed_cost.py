"""The fixed cost of a training process: what `cnnlab train` spends before and after its epochs (not a test).

    .venv/bin/python benchmarks/fixed_cost.py [--repeats 3]

Each measurement is a fresh process, timed from the outside (wall clock), the median of --repeats:

  python        the interpreter alone (`python -c pass`)
  torch         `import torch`
  torchvision   `import torch, torchvision`: torchvision's package imports torchvision.ops, whose roi_align
                imports torch._dynamo (about half of torchvision's cost)
  dynamo        `import torch, torch._dynamo`: the first optimizer step imports it anyway (torch.optim), so a
                training process pays it whatever cnnlab imports
  cli           `cnnlab --help`: the command table, nothing of torch imported
  train import  `import cnnlab.commands.train`: everything a training process imports
  1 epoch       `cnnlab train` of one epoch on a tiny synthetic set (3 classes, 12 images each of 64 px, trained at 32 px, simple_cnn,
                --workers 0, --cache off): the whole process; "fixed" is that minus the epoch's own seconds
                (metrics.csv), i.e. imports, scanning, the run folder, and the end (evaluation, plots, report)

Results go to benchmarks/results/fixed_cost.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "fixed_cost.md"
ENV = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))


def timed(args: list[str]) -> float:
    """Wall seconds of one process running `args` (which must succeed)."""
    began = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=ENV)
    return time.perf_counter() - began


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def one_epoch(data: Path, out: Path) -> tuple[float, float]:
    """(process seconds, the epoch's own seconds) of a one-epoch training run."""
    shutil.rmtree(out, ignore_errors=True)
    total = timed([sys.executable, "-m", "cnnlab", "train", "--data", str(data), "--epochs", "1", "--img-size", "32",
                   "--model", "simple_cnn", "--model-option", "widths=[8,16]", "--batch-size", "8", "--workers", "0",
                   "--cache", "off", "--out", str(out)])
    with open(out / "metrics.csv") as handle:
        epoch = float(next(csv.DictReader(handle))["seconds"])
    return total, epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    rows = []
    commands = [("python", python("pass")), ("torch", python("import torch")),
                ("torchvision", python("import torch, torchvision")),
                ("dynamo", python("import torch, torch._dynamo")),
                ("cli", [sys.executable, "-m", "cnnlab", "--help"]),
                ("train import", python("import cnnlab.commands.train"))]
    for name, args in commands:
        timed(args)  # warm the file cache
        seconds = [timed(args) for _ in range(repeats)]
        rows.append((name, statistics.median(seconds), None))
        print(f"{name:14s} {rows[-1][1]:.2f}s", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "shapes"
        subprocess.run([sys.executable, "-m", "cnnlab", "data", "synth", str(data), "--kind", "shapes",
                        "--size", "64", "--per-class", "12", "--classes", "3"], check=True, capture_output=True, env=ENV)
        one_epoch(data, Path(folder) / "warm")
        runs = [one_epoch(data, Path(folder) / f"run{k}") for k in range(repeats)]
    total = statistics.median(run[0] for run in runs)
    fixed = statistics.median(run[0] - run[1] for run in runs)
    rows.append(("1 epoch", total, fixed))
    print(f"1 epoch        {total:.2f}s, fixed {fixed:.2f}s", flush=True)

    lines = ["# Fixed cost of a training process", "",
             f"Measured by `benchmarks/fixed_cost.py --repeats {repeats}` on {datetime.date.today()}, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; fresh processes, median wall seconds.", "",
             "| what | seconds | fixed (minus the epoch) |", "|---|---:|---:|"]
    for name, seconds, fixed_part in rows:
        lines.append(f"| {name} | {seconds:.2f} | {'' if fixed_part is None else f'{fixed_part:.2f}'} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
