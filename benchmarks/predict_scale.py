"""Prediction throughput on this machine: plain `cnnlab predict` against `--engine ray` (a local Ray instance), for
1024 px JPEGs (whole-image run) and 8000x6000 JPEGs (tiled run), and float32 against int8 ONNX where an int8 file
can be made (not a test).

    .venv/bin/python benchmarks/predict_scale.py [--images 1000] [--large 6]

Every measurement is images per second over the whole call, in this process, one after the other (never two at
once). Ray is measured twice: cold (the call starts and stops its own Ray instance, as the command does) and warm
(a Ray instance already running, as on a cluster that outlives one job), so its start-up cost is stated apart from
its steady rate. The run's model is a resnet9 trained one epoch on synthetic data: throughput does not depend on
what it learned. Results go to benchmarks/results/predict_scale.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "predict_scale.md"


def timed(function, *args, **kwargs) -> tuple[float, object]:
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - began, result


def large_jpegs(source: Path, folder: Path, count: int) -> list[Path]:
    """`count` 8000x6000 JPEGs made of a synthetic 2000 px image repeated (4x3), each shifted so none is equal."""
    from cnnlab.data.images import read_image, save_image
    folder.mkdir(parents=True, exist_ok=True)
    base = read_image(source).numpy().transpose(1, 2, 0)  # (2000, 2000, 3)
    paths = []
    for k in range(count):
        picture = np.tile(np.roll(base, 97 * k, axis=1), (3, 4, 1))  # (6000, 8000, 3)
        path = folder / f"large_{k:02d}.jpg"
        save_image(picture, path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="1024 px JPEGs to predict")
    parser.add_argument("--large", type=int, default=6, help="8000x6000 JPEGs to predict with the tiled run")
    args = parser.parse_args()

    import ray
    import torch

    from cnnlab.commands.export import export
    from cnnlab.commands.predict import predict
    from cnnlab.commands.train import fit
    from cnnlab.data.synth import synthesize
    from cnnlab.errors import CnnlabError

    cores = os.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="cnnlab-predict-scale-"))
    per_class = -(-args.images // 4)
    print(f"writing {4 * per_class} 1024 px JPEGs ...", flush=True)
    synthesize(work / "photos", classes=4, per_class=per_class, size=1024, val_fraction=0.5, seed=0, workers=cores)
    # 3 epochs: enough to classify the shapes, so that the int8 check compares a model with a real decision
    run = fit(data=str(work / "photos"), model="resnet9", img_size=128, epochs=3, out=str(work / "run"),
              precision="fp32", cache="off", verbose=False).run_dir
    images = sorted(str(p) for p in (work / "photos").rglob("*.jpg"))[:args.images]
    rows = []

    def measure(name: str, inputs: list[str], **options) -> float:
        seconds, result = timed(predict, run_dir=options.pop("run_dir"), inputs=inputs, **options)
        rate = len(inputs) / seconds
        rows.append((name, len(inputs), seconds, rate))
        print(f"{name}: {len(inputs)} images in {seconds:.1f} s = {rate:.1f} images/s", flush=True)
        return rate

    plain = measure("plain predict, 1024 px", images, run_dir=run)
    cold = measure("--engine ray (cold: starts Ray), 1024 px", images, run_dir=run, engine="ray",
                   out=work / "cold.parquet")
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    warm = measure("--engine ray (warm: Ray running), 1024 px", images, run_dir=run, engine="ray",
                   out=work / "warm.parquet")
    # the steady rate, without start-up: the same files three times over in one call, minus the one-pass call
    triple = images * 3
    warm3 = measure("--engine ray (warm), the 1024 px files 3 times", triple, run_dir=run, engine="ray",
                    out=work / "warm3.parquet")
    ray.shutdown()
    plain3 = measure("plain predict, the 1024 px files 3 times", triple, run_dir=run)
    steady_ray = 2 * len(images) / (len(triple) / warm3 - len(images) / warm)
    steady_plain = 2 * len(images) / (len(triple) / plain3 - len(images) / plain)
    onnx = export(run).path
    onnx_rate = measure("plain predict, model.onnx (float32), 1024 px", images, run_dir=onnx)
    int8_rate, int8_note = None, ""
    try:
        int8 = export(run, int8=True).int8
        int8_rate = measure("plain predict, model.int8.onnx, 1024 px", images, run_dir=int8.path)
        int8_note = f"export --int8's own measurement of the network alone: {int8.describe(1).splitlines()[-1]}"
    except CnnlabError as error:  # refused: the int8 copy disagreed with float32 more than the tolerance
        int8_note = f"export --int8 {error}"
        print(int8_note, flush=True)

    # large images, tiled: a run trained on 256 px tiles at scale 0.25
    synthesize(work / "objects", kind="objects", classes=3, per_class=8, size=2000, val_fraction=0.25, seed=1,
               workers=cores)
    tiled = fit(data=str(work / "objects"), model="resnet9", tile=256, scale=0.25, epochs=1, batch_size=16,
                out=str(work / "tiled"), precision="fp32", cache="off", verbose=False).run_dir
    large = [str(p) for p in large_jpegs(sorted((work / "objects").rglob("*.jpg"))[0], work / "large", args.large)]
    large_plain = measure("plain predict, 8000x6000 tiled (scale 0.25)", large, run_dir=tiled, cache="off")
    large_ray = measure("--engine ray (cold), 8000x6000 tiled (scale 0.25)", large, run_dir=tiled,
                        engine="ray", out=work / "large.parquet")

    vnni = "unknown"
    try:
        flags = Path("/proc/cpuinfo").read_text()
        vnni = "yes" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "no"
    except OSError:
        pass
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Prediction throughput: plain predict, --engine ray, float32 and int8 ONNX",
        "",
        f"Made by `benchmarks/predict_scale.py --images {args.images} --large {args.large}` on {now}: "
        f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, ray "
        f"{ray.__version__}, VNNI: {vnni}. Images per second over the whole call (decode, prepare, model, rows).",
        "",
        "| what | images | seconds | images/s |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {n} | {s:.1f} | {r:.1f} |" for name, n, s, r in rows),
        "",
        f"- Ray warm / plain: {warm / plain:.2f}; Ray cold / plain: {cold / plain:.2f} (the cold call includes "
        f"starting and stopping a local Ray instance: {len(images) / cold - len(images) / warm:.1f} s more than "
        "warm for the same images).",
        f"- Steady rates (the extra {2 * len(images)} images of the 3x call over the 1x call, start-up cancelled): "
        f"Ray {steady_ray:.1f} images/s, plain {steady_plain:.1f} images/s: Ray / plain {steady_ray / steady_plain:.2f}. "
        f"Ray's fixed cost in this one-shot job: {len(images) / warm - len(images) / steady_ray:.1f} s with an "
        f"instance running (its actors start: a Python process per core importing torch and cnnlab), "
        f"{len(images) / cold - len(images) / steady_ray:.1f} s cold.",
        f"- ONNX float32 / PyTorch: {onnx_rate / plain:.2f}"
        + (f"; int8 / float32 ONNX: {int8_rate / onnx_rate:.2f}" if int8_rate else "; int8: no file")
        + f" ({int8_note}).",
        f"- Large images: Ray / plain {large_ray / large_plain:.2f} (cold).",
        f"- Per core: plain predict's rate is {plain / cores:.1f} images/s per core here. An actor is one core with "
        "one torch thread; with the files on shared storage and the model small, each node adds its cores' rate "
        "(compute-bound: decoding and the model), until the storage's read rate is reached (I/O-bound: a 1024 px "
        "JPEG of ~200 kB at this rate per core is far below a network file system's throughput; 8000x6000 JPEGs "
        "are ~10 MB each).",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
