"""Large images at their own resolution: tiled prediction's speed and memory, tile vs whole-image training (not a test).

    .venv/bin/python benchmarks/tiled.py [--quick] [--epochs 30]

Two parts, written to benchmarks/results/tiled.md:

  (1) accuracy  the small-object synth set (`cnnlab data synth --kind objects`: 3 classes decided by 90-180 objects
                of ~47 px scattered over 3000 px cluttered images). Two runs with the same epochs and every other
                default: whole images resized to 224 px (objects ~3.5 px: their shape gone), and random 256 px
                tiles cut at scale 0.5 (objects ~24 px), validated per image by the sliding window.
  (2) predict   one 8000x6000 JPEG, predicted with `cnnlab predict RUN big.jpg --scale 0.5` (256 px windows at
                half the file's pixels, overlap 0.5) as a whole process: peak resident memory of the process tree
                (the CLI and any DataLoader worker, sampled every 20 ms from /proc) and wall time. Then, in one
                process: tiles/s of the sliding window (decoding the JPEG at scale 0.5 included) against the
                model's plain batch inference on the same tiles already in memory.

Generated data lives in benchmarks/data/ (ignored by git); the tile run of part (1) is the model of part (2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
RESULTS = HERE / "results" / "tiled.md"
TILE, TILE_SCALE, PREDICT_SCALE, WHOLE_SIZE = 256, 0.5, 0.5, 224
TARGETS = {"tile_acc": 0.90, "whole_over_chance": 0.15, "rss_gb": 1.0, "throughput": 0.80}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def objects_set(size: int, per_class: int) -> Path:
    """The small-object synth set, written once (synthesize reuses a complete folder of the same parameters and
    refuses one made with others: delete it then)."""
    from cnnlab.data.synth import synthesize

    root = DATA_DIR / f"objects-{size}-3x{per_class}"
    print(f"the objects set: {3 * per_class} images of {size} px in {root} ...", file=sys.stderr, flush=True)
    synthesize(root, classes=3, per_class=per_class, size=size, seed=0, kind="objects",
               workers=len(os.sched_getaffinity(0)))
    return root


def big_jpeg(width: int = 8000, height: int = 6000) -> Path:
    """One width x height JPEG of the objects kind (quality 90), written once."""
    from cnnlab.data.images import save_image
    from cnnlab.data.synth import OBJECT_SHAPES, render_objects

    path = DATA_DIR / f"big-{width}x{height}.jpg"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        pixels, _ = render_objects(OBJECT_SHAPES[0], width, np.random.default_rng(0))  # (width, width, 3)
        save_image(pixels[:height], path, quality=90)
    return path


# --------------------------------------------------------------------------------------------
# (1) accuracy
# --------------------------------------------------------------------------------------------

def train_both(data: Path, epochs: int, out: Path) -> list[dict]:
    """Whole-image and tile runs on `data`, same epochs, every other option cnnlab's default."""
    from cnnlab.commands.train import fit

    rows = []
    for name, options in (("whole image, 224 px", {"img_size": WHOLE_SIZE}),
                          (f"tiles {TILE} px at scale {TILE_SCALE}", {"tile": TILE, "scale": TILE_SCALE})):
        start = time.perf_counter()
        result = fit(data=str(data), epochs=epochs, out=str(out / name.split(",")[0].replace(" ", "-")),
                     overwrite=True, verbose=False, **options)
        seconds = time.perf_counter() - start
        last = result.history[-1]
        rows.append({"run": name, "run_dir": str(result.run_dir), "epochs": len(result.history),
                     "val_acc": last["val_acc"], "best_val_acc": result.best_val_acc, "seconds": seconds})
        print(f"(1) {name}: val acc {last['val_acc']:.3f} (best {result.best_val_acc:.3f}) in {seconds:.0f} s",
              file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# (2) prediction: memory of the whole CLI process tree, throughput against in-memory tiles
# --------------------------------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def _memory_bytes(pid: int, key: str = "VmRSS:", table: str = "status") -> int:
    """A process's resident memory (VmRSS from status; Pss from smaps_rollup: shared pages split among
    the processes that map them)."""
    try:
        for line in Path(f"/proc/{pid}/{table}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def predict_memory(run_dir: str, image: Path) -> dict:
    """Peak RSS (and PSS) summed over the `cnnlab predict` process tree, and its wall time."""
    cli = str(Path(sys.executable).with_name("cnnlab"))
    command = [cli, "predict", run_dir, str(image), "--scale", str(PREDICT_SCALE), "--json"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_pss = 0
    while process.poll() is None:
        pids = _tree(process.pid)
        peak = max(peak, sum(_memory_bytes(pid) for pid in pids))
        peak_pss = max(peak_pss, sum(_memory_bytes(pid, "Pss:", "smaps_rollup") for pid in pids))
        time.sleep(0.02)
    out, err = process.communicate()
    seconds = time.perf_counter() - start
    if process.returncode not in (0, 1):  # 1: an image could not be read (not expected here)
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-2000:]}")
    return {"peak_rss": peak, "peak_pss": peak_pss, "seconds": seconds, "command": " ".join(["cnnlab"] + command[1:]),
            "output": json.loads(out)}


def throughput(run_dir: str, image: Path, repeats: int) -> dict:
    """Tiles/s of the sliding window over `image` (decode at PREDICT_SCALE included) and of the same tiles
    held in memory, through the same pipeline and model, in the window's batches; best of `repeats`."""
    import torch

    from cnnlab.data.folders import Sample
    from cnnlab.data.tiles import cut_tiles, tile_positions
    from cnnlab.runs.inference import open_trained
    from cnnlab.training.forward import window_batch

    trained = open_trained(run_dir).with_tiles(PREDICT_SCALE)
    pre = trained.preprocessing
    dataset = trained.dataset([Sample(str(image), 0)], cache="off")
    loader = trained.loader(dataset, workers=0)  # decode in this process: the comparison is about the window
    window = []
    for _ in range(repeats):
        start = time.perf_counter()
        trained.logits(loader)  # the sliding window batches by its own rule (window_batch)
        window.append(time.perf_counter() - start)
    scaled = dataset[0][0]  # (3, H, W) uint8 at scale 0.5
    positions = tile_positions(scaled.shape[1], scaled.shape[2], pre.tile, pre.overlap)
    tiles = cut_tiles(scaled, positions, pre.tile)  # (n, 3, 256, 256) uint8, in memory
    step = window_batch(pre.tile)  # the same batches as the window's
    memory = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for first in range(0, len(tiles), step):
                batch = trained.pipeline(tiles[first:first + step])
                with trained.pipeline.precision.autocast(trained.pipeline.device):
                    trained.model(batch)
            memory.append(time.perf_counter() - start)
    n = len(positions)
    return {"tiles": n, "scaled": f"{scaled.shape[2]}x{scaled.shape[1]}", "window_rate": n / min(window),
            "window_batch": step,
            "memory_rate": n / min(memory), "ratio": min(memory) / min(window)}


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def _verdict(met: bool, text: str) -> str:
    return ("met: " if met else "**missed**: ") + text


def report(args, data: Path, accuracy: list[dict], memory: dict, speed: dict, seconds: float, load: tuple) -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    chance = 1 / 3
    lines = ["# Large images at their own resolution: tiles vs whole images, tiled prediction", "",
             f"Generated by `benchmarks/tiled.py{' --quick' if args.quick else ''} --epochs {args.epochs}` in "
             f"{seconds / 60:.1f} min on {cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
             f"{datetime.datetime.now():%Y-%m-%d %H:%M} (load average {load[0]:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end).", "",
             f"## (1) Accuracy on the small-object set (`{data.name}`: 3 classes, chance 33 %)", "",
             "Each image holds 90-180 copies of its class's shape, ~1/64 of the side, on clutter that contains "
             "every class's colours. Same epochs, every other option the default (resnet9, batch augmentation, "
             "label smoothing, weight average; whole images: progressive resizing and average pooling; tiles: "
             "whole tiles and resnet9's max-and-average pooling, the defaults of tiled runs). Validation accuracy "
             "is per image (tile runs: the mean of the sliding window's logits).", "",
             "| run | epochs | final val accuracy | best val accuracy | time |", "|---|---|---|---|---|"]
    for r in accuracy:
        lines.append(f"| {r['run']} | {r['epochs']} | **{r['val_acc'] * 100:.1f} %** | {r['best_val_acc'] * 100:.1f} % "
                     f"| {r['seconds']:.0f} s |")
    lines += ["", f"## (2) Tiled prediction of an 8000x6000 JPEG at scale {PREDICT_SCALE}, {TILE} px tiles", "",
              f"`{memory['command']}` as a whole process: peak resident memory summed over the process tree "
              f"**{memory['peak_rss'] / 2**30:.2f} GiB** (PSS, shared pages split: {memory['peak_pss'] / 2**30:.2f} "
              f"GiB), wall time {memory['seconds']:.1f} s (imports, model, decode and every tile included; "
              "`import torch` alone is ~0.5 GiB of it).", "",
              f"In one process (the JPEG decoded at scale {PREDICT_SCALE} to {speed['scaled']} px, "
              f"{speed['tiles']} windows, best of {args.repeats}; the window runs batches of "
              f"{speed['window_batch']} tiles (cnnlab.training.forward.window_batch), and so does the in-memory "
              "reference):", "",
              "| path | tiles/s |", "|---|---|",
              f"| sliding window (decode, cut, normalise, model) | {speed['window_rate']:.1f} |",
              f"| the same tiles held in memory (normalise, model) | {speed['memory_rate']:.1f} |",
              f"| **ratio** | **{speed['ratio'] * 100:.0f} %** |", "", "## Targets", ""]
    tile, whole = accuracy[1], accuracy[0]
    lines.append("- tile training >= 90 % image accuracy: " + _verdict(
        tile["val_acc"] >= TARGETS["tile_acc"], f"{tile['val_acc'] * 100:.1f} %"))
    lines.append("- whole-image training at 224 px <= chance + 15 points (48.3 %): " + _verdict(
        whole["val_acc"] <= chance + TARGETS["whole_over_chance"], f"{whole['val_acc'] * 100:.1f} %"))
    lines.append("- peak RSS <= 1 GB: " + _verdict(memory["peak_rss"] <= TARGETS["rss_gb"] * 1e9,
                                                   f"{memory['peak_rss'] / 1e9:.2f} GB"))
    lines.append("- throughput >= 80 % of in-memory batch inference: " + _verdict(
        speed["ratio"] >= TARGETS["throughput"], f"{speed['ratio'] * 100:.0f} %"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller set and fewer epochs (a check that it runs)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of both training runs")
    parser.add_argument("--per-class", type=int, default=60, help="images per class of the objects set")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the throughput measurement")
    parser.add_argument("--out", default=str(RESULTS), help="Markdown report")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.per_class, args.repeats = 2, 6, 1
    started, load = time.perf_counter(), os.getloadavg()
    data = objects_set(3000, args.per_class)
    image = big_jpeg()
    with tempfile.TemporaryDirectory(prefix="tiled-", dir=DATA_DIR) as scratch:
        os.environ.setdefault("CNNLAB_CACHE", str(Path(scratch) / "cache"))  # a cold cache for both runs
        accuracy = train_both(data, args.epochs, Path(scratch))
        memory = predict_memory(accuracy[1]["run_dir"], image)
        print(f"(2) cnnlab predict: peak RSS {memory['peak_rss'] / 2**30:.2f} GiB, {memory['seconds']:.1f} s",
              file=sys.stderr, flush=True)
        speed = throughput(accuracy[1]["run_dir"], image, args.repeats)
        print(f"(2) window {speed['window_rate']:.1f} tiles/s, in memory {speed['memory_rate']:.1f} tiles/s",
              file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(args, data, accuracy, memory, speed, time.perf_counter() - started, load))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
