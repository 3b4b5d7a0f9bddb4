"""Training speed and memory against the batch size (not a test): where --batch-size auto's CPU cap comes from.

    .venv/bin/python benchmarks/batch_size.py [--threads 2] [--batches 16,32,64,128,256,512]

For each model and side, one training step per batch size is measured the way `cnnlab plan` measures it
(cnnlab.training.memory.MemoryProbe: a child process, one warm-up step, then two timed steps of device
augmentation, forward, backward and AdamW on a synthetic batch), giving img/s and the step's peak memory.
On a CPU, a larger batch stops paying once a step's activations no longer fit the caches: img/s levels off and
then falls, while the memory keeps growing linearly. Results go to benchmarks/results/batch_size.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch

from cnnlab.training.memory import CPU_MAX_BATCH, MemoryProbe, OutOfMemory, StepSpec, format_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "batch_size.md"
CASES = (("resnet9", 64), ("resnet9", 128), ("simple_cnn", 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of the steps")
    parser.add_argument("--batches", default="16,32,64,128,256,512", help="batch sizes, comma-separated")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    lines = ["# Training speed and memory against the batch size", "",
             f"`.venv/bin/python benchmarks/batch_size.py --threads {args.threads} --batches {args.batches}` — "
             f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.machine()}, {args.threads} thread(s), "
             f"torch {torch.__version__}, fp32, channels_last, the default augmentation on the device.", "",
             "img/s of a training step on synthetic batches (the network alone, no loading) and the step's peak "
             "memory, as `cnnlab plan` measures them. --batch-size auto caps CPU runs at "
             f"{CPU_MAX_BATCH}.", "",
             "| model | side | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---:|" + "---:|" * len(batches)]
    for model, side in CASES:
        spec = StepSpec(model, 10, {"dropout": 0.2, "img_size": side}, side, False, "fp32", True, "default",
                        "device", "adamw", 0.1, True, 0, args.threads)
        cells = []
        with MemoryProbe(spec, torch.device("cpu")) as probe:
            for batch in batches:
                try:
                    step = probe.measure(batch)
                except OutOfMemory:
                    cells.append("out of memory")
                    continue
                cells.append(f"{1 / step.seconds_per_image:.0f} img/s, {format_bytes(step.peak_bytes)}")
                print(f"{model} {side} px batch {batch}: {cells[-1]}", flush=True)
        lines.append(f"| {model} | {side} | " + " | ".join(cells) + " |")
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
