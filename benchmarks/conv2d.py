"""Time cnnlab.scratch's conv2d_loop and vectorised conv2d against torch.nn.functional.conv2d.

Run: `.venv/bin/python benchmarks/conv2d.py` (or `make bench`). Prints a table and writes
benchmarks/results/conv2d.md with the machine it ran on. On a busy machine, compare single-threaded:
`OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/conv2d.py`; the thread
settings in effect are recorded with the results. Each case also checks that all
implementations agree, so a fast but wrong kernel cannot go unnoticed.
"""

import argparse
import os
import platform
import timeit
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.scratch import conv2d, conv2d_loop

RESULTS = Path(__file__).parent / "results" / "conv2d.md"


@dataclass(frozen=True)
class Case:
    """One conv layer to time: input (N, C_in, H, W) and a square kernel, stride 1, padding 1."""

    batch: int
    in_channels: int
    out_channels: int
    size: int
    kernel_size: int
    with_loop: bool  # the loop version takes seconds per call beyond tiny inputs

    def label(self) -> str:
        """Short description for the table, e.g. 'N=1 C_in=3 C_out=8 32x32 k=3'."""
        return (
            f"N={self.batch} C_in={self.in_channels} C_out={self.out_channels} "
            f"{self.size}x{self.size} k={self.kernel_size}"
        )


CASES = [
    Case(batch=1, in_channels=3, out_channels=8, size=32, kernel_size=3, with_loop=True),
    Case(batch=1, in_channels=3, out_channels=8, size=64, kernel_size=3, with_loop=False),
    Case(batch=8, in_channels=16, out_channels=32, size=64, kernel_size=3, with_loop=False),
]


def seconds_per_call(fn, repeats: int) -> float:
    """Best seconds per call over `repeats` runs, each long enough (>= 0.2 s) to time reliably."""
    # The minimum, as timeit advises: other processes only ever add time, so it is the least noisy.
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeats, number=number)) / number


def time_case(case: Case, dtype: np.dtype, repeats: int) -> list[dict]:
    """Time every implementation on one case and dtype; return one row per implementation."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, case.in_channels, case.size, case.size)).astype(dtype)
    weight = rng.standard_normal((case.out_channels, case.in_channels, case.kernel_size, case.kernel_size))
    weight = weight.astype(dtype)
    bias = rng.standard_normal(case.out_channels).astype(dtype)
    x_t, weight_t, bias_t = torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias)
    padding = case.kernel_size // 2

    implementations = {
        "torch F.conv2d": lambda: F.conv2d(x_t, weight_t, bias_t, padding=padding),
        "scratch conv2d (im2col)": lambda: conv2d(x, weight, bias, padding=padding),
    }
    if case.with_loop:
        implementations["scratch conv2d_loop"] = lambda: conv2d_loop(x, weight, bias, padding=padding)

    reference = implementations["torch F.conv2d"]().numpy()
    tolerance = 1e-3 if dtype == np.float32 else 1e-10
    rows = []
    for name, fn in implementations.items():
        error = float(np.abs(np.asarray(fn()) - reference).max())
        assert error < tolerance, f"{name} disagrees with torch by {error} on {case.label()} {dtype}"
        if name == "scratch conv2d_loop":  # about a second per call: best of 3 single calls is enough
            seconds = min(timeit.repeat(fn, number=1, repeat=3))
        else:
            seconds = seconds_per_call(fn, repeats)
        rows.append(
            {"case": case.label(), "dtype": np.dtype(dtype).name, "implementation": name,
             "seconds": seconds, "max_abs_error": error}
        )
    torch_seconds = rows[0]["seconds"]
    for row in rows:
        row["vs_torch"] = row["seconds"] / torch_seconds
    return rows


def machine_info() -> dict:
    """CPU model, core counts and library versions, so the numbers can be compared across machines."""
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": cpu_model,
        "logical cores (machine / usable by this process)": f"{os.cpu_count()} / {usable}",
        "torch threads": torch.get_num_threads(),
        "OMP_NUM_THREADS / OPENBLAS_NUM_THREADS": " / ".join(
            os.environ.get(name, "unset") for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        ),
        # Above the core count, other processes competed for the CPU and the times are inflated.
        "load average (1 min) after the run": f"{os.getloadavg()[0]:.2f}",
        "Python": platform.python_version(),
        "NumPy": np.__version__,
        "torch": torch.__version__,
        "OS": platform.platform(),
    }


def to_markdown(rows: list[dict], info: dict) -> str:
    """Results table plus machine description as a Markdown document."""
    lines = [
        "# conv2d: from-scratch NumPy vs torch (CPU)",
        "",
        "Generated by `benchmarks/conv2d.py`. Stride 1, padding k//2, with bias. Time per call is the best",
        "of the repeats (the loop: of 3 single calls); `x torch` is time / torch's time for the same case.",
        "",
        "| case | dtype | implementation | ms per call | x torch | max abs error vs torch |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['dtype']} | {row['implementation']} | {row['seconds'] * 1e3:.3f} "
            f"| {row['vs_torch']:.1f} | {row['max_abs_error']:.1e} |"
        )
    lines += ["", "## Machine", ""] + [f"- {key}: {value}" for key, value in info.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every case in float64 and float32, print the table, and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per implementation (best is kept)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the Markdown table")
    args = parser.parse_args()

    rows = []
    for case in CASES:
        for dtype in (np.float64, np.float32):
            rows += time_case(case, dtype, args.repeats)
    report = to_markdown(rows, machine_info())
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
