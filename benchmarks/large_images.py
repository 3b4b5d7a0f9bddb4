"""Side-by-side benchmark on large JPEGs: the lecture's pipeline against cnnlab's (not a test).

    .venv/bin/python benchmarks/large_images.py [--quick]
    .venv/bin/python benchmarks/large_images.py --data FOLDER [--limit N] --out benchmarks/results/NAME.md

Both pipelines run in this one process, one after the other, on the same files, the same worker
count and batch size 32, so the ratios are fair even on a machine whose speed changes over time:

  lecture  torchvision.datasets.ImageFolder + PIL + transforms v1 Compose (full-size decode every epoch)
  cnnlab   ImageDataset + the resolution cache (cnnlab.data.cache); workers read uint8 pixels and crop,
           flip/rotation/colour jitter run per image on the whole batch on the device (cnnlab.data.augment)

Sections:
  (a) data loading into 224 px training batches, images/s: first epoch (cache build included), epochs 2-4
  (a') where the time of one image goes, per step, on one core
  (b) training compute at 224 px on in-memory tensors: fp32 (lecture: NCHW), fp32 channels_last, auto
  (c) compute-bound fraction: cnnlab's epoch on real files vs the same steps on in-memory tensors
  (d) DataLoader workers 0, 1, 2 for cached and uncached training (what device.default_workers picks)
  (e) whole processes: 5 epochs at 224 px on the 4000x3000 JPEGs from a cold cache, the lecture's script
      vs `cnnlab train` (imports, workers, cache build and the run folder's files included)

What is compared runs interleaved (lecture, cnnlab, lecture, ...; fp32, auto, fp32, ...) and
steady-state numbers are the best of the repeats: other jobs on a shared machine only ever slow a
run down, so a burst of load hits both sides alike and the fastest repeat is the closest to the
machine's real speed.

Generated data (1024x768, 2000x1500, 4000x3000 JPEGs of the built-in shapes, quality 90) is kept in
benchmarks/data/, which git ignores. Results go to benchmarks/results/large_images.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image, features
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from cnnlab.data.augment import BatchAugment
from cnnlab.data.cache import decode_for_cache, open_cache
from cnnlab.data.dataset import Batch, ImageDataset
from cnnlab.data.folders import Sample, find_samples
from cnnlab.data.images import save_image
from cnnlab.data.loaders import make_loader
from cnnlab.data.synth import SHAPE_NAMES, render
from cnnlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, decode_size, train_transform
from cnnlab.models import create_model
from cnnlab.training.device import cpu_has_fast_bf16, default_workers, resolve_precision
from cnnlab.training.forward import InputPipeline

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
RESULTS_DIR = HERE / "results"
IMG_SIZE = 224
BATCH_SIZE = 32
# (width, height, images): enough batches per epoch to time on 2 cores in a few seconds each.
SIZES = [(1024, 768, 96), (2000, 1500, 160), (4000, 3000, 32)]
QUICK_SIZES = [(1024, 768, 32), (2000, 1500, 32), (4000, 3000, 16)]
CLASSES = 2
# Images per epoch in sections (c) and (d): five batches, so that waiting for the first batch of an
# epoch (the workers' queue is empty when it starts) weighs little, as in real epochs.
FRACTION_IMAGES = 160
TARGETS = {"first_epoch": 2.5, "cached_epoch": 20.0, "auto_vs_fp32": 2.5, "compute_fraction": 0.90,
           "whole_process": 5.0}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def _write_photo(job: tuple) -> None:
    """One 4:3 JPEG: the built-in shapes rendered at full width, cropped to the height."""
    path, class_index, index, width, height = job
    pixels, _ = render(SHAPE_NAMES[class_index], width, np.random.default_rng([class_index, index, width]))
    top = (width - height) // 2
    save_image(pixels[top:top + height], path, quality=90)  # (height, width, 3)


def generated_dataset(width: int, height: int, count: int) -> Path:
    """DATA_DIR/shapes-WxH-N/<class>/*.jpg, written once (a marker file says it is complete)."""
    root = DATA_DIR / f"shapes-{width}x{height}-{count}"
    marker = root / "complete.json"
    if marker.exists():
        return root
    jobs = [(root / SHAPE_NAMES[c] / f"{i:04d}.jpg", c, i, width, height)
            for c in range(CLASSES) for i in range(count // CLASSES)]
    print(f"writing {len(jobs)} JPEGs of {width}x{height} to {root} ...", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        list(pool.map(_write_photo, jobs))
    marker.write_text(json.dumps({"width": width, "height": height, "count": len(jobs)}))
    return root


def folder_samples(data: Path, limit: int | None) -> tuple[Path, list[Sample]]:
    """(folder holding the class folders, samples): the train split of a real folder, every k-th image."""
    found = find_samples(data)
    class_root = Path(data) / "train" if (Path(data) / "train").is_dir() else Path(data)
    samples = found.splits["train"]
    if limit and limit < len(samples):
        step = len(samples) / limit
        samples = [samples[int(i * step)] for i in range(limit)]  # spread over all classes
    return class_root, samples


# --------------------------------------------------------------------------------------------
# the two pipelines
# --------------------------------------------------------------------------------------------

def lecture_transform(img_size: int) -> T.Compose:
    """The lecture's augmentation, transforms v1 on PIL images (the same parameters as cnnlab's preset)."""
    return T.Compose([
        T.Resize(decode_size(img_size)),
        T.RandomHorizontalFlip(),
        T.RandomRotation(10),
        T.RandomResizedCrop(img_size, scale=(0.8, 1.0)),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def lecture_loader(class_root: Path, samples: list[Sample], workers: int) -> DataLoader:
    """ImageFolder (which decodes with PIL at full size) restricted to `samples`, batch 32, shuffled."""
    dataset = torchvision.datasets.ImageFolder(str(class_root), transform=lecture_transform(IMG_SIZE))
    wanted = {os.path.abspath(s.path) for s in samples}
    dataset.samples = [item for item in dataset.samples if os.path.abspath(item[0]) in wanted]
    dataset.imgs = dataset.samples
    # persistent workers for both pipelines: the comparison is about decoding and augmenting
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0)


def cnnlab_loader(samples: list[Sample], workers: int, cache: str, cache_dir: str | None,
                  transform=None) -> tuple[DataLoader, float]:
    """(loader as fit() builds it, seconds spent opening/building the cache). The workers only read uint8
    pixels and crop (the default `--augment-on device`); `device_augment` does the rest on each batch."""
    start = time.perf_counter()
    source = open_cache([s.path for s in samples], decode_size(IMG_SIZE), cache, cache_dir=cache_dir,
                        verbose=False) if cache != "off" else None
    build = time.perf_counter() - start
    dataset = ImageDataset(samples, transform or train_transform("default", IMG_SIZE, augment_on="device"),
                           decode_size(IMG_SIZE), source=source)
    return make_loader(dataset, BATCH_SIZE, workers, train=True, seed=0), build


def device_pipeline(augment: bool = True) -> InputPipeline:
    """What fit() does to a batch on the device: uint8 -> float, the per-image batch augmentation, normalise."""
    device = torch.device("cpu")
    return InputPipeline(device, resolve_precision("auto", device), augment=BatchAugment() if augment else None)


def _images_labels(batch, pipeline: InputPipeline | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input, labels) of a lecture batch (a normalised float tuple) or a cnnlab Batch (uint8 + seeds)."""
    if isinstance(batch, Batch):
        return pipeline(batch.images, batch.seeds, train=True), batch.labels
    return batch[0], batch[1]


def one_epoch(loader: DataLoader, epoch: int, step=None, pipeline: InputPipeline | None = None) -> float:
    """Seconds for one pass over `loader`: a cnnlab batch goes through `pipeline` (its batch augmentation
    is part of loading), then `step(images, labels)` per batch, if given."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    pipeline = pipeline or device_pipeline()
    start = time.perf_counter()
    for batch in loader:
        images, labels = _images_labels(batch, pipeline)
        if step is not None:
            step(images, labels)
    return time.perf_counter() - start


def memory_epoch(batches: list[Batch], step, pipeline: InputPipeline) -> float:
    """Seconds for the same training steps on in-memory uint8 batches (through the same device pipeline)."""
    start = time.perf_counter()
    for batch in batches:
        step(pipeline(batch.images, batch.seeds, train=True), batch.labels)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# training steps
# --------------------------------------------------------------------------------------------

def trainer(model_name: str, precision_name: str, channels_last: bool | None = None):
    """A training step function (images, labels) -> None for a fresh model, and its precision."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    precision = resolve_precision(precision_name, device, channels_last)
    model = create_model(model_name, 10, img_size=IMG_SIZE)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            loss = nn.functional.cross_entropy(model(images).float(), labels % 10)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, precision


def random_batches(count: int, batch_size: int = BATCH_SIZE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """In-memory batches: (N, 3, 224, 224) float32 and (N,) labels."""
    generator = torch.Generator().manual_seed(0)
    sizes = [batch_size] * (count // batch_size) + ([count % batch_size] if count % batch_size else [])
    return [(torch.randn(n, 3, IMG_SIZE, IMG_SIZE, generator=generator),
             torch.randint(0, 10, (n,), generator=generator)) for n in sizes]


def uint8_batches(count: int, batch_size: int = BATCH_SIZE) -> list[Batch]:
    """In-memory batches shaped like cnnlab's loader's: uint8 (N, 3, 224, 224), labels, indices, seeds."""
    generator = torch.Generator().manual_seed(0)
    sizes = [batch_size] * (count // batch_size) + ([count % batch_size] if count % batch_size else [])
    return [Batch(torch.randint(0, 256, (n, 3, IMG_SIZE, IMG_SIZE), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (n,), generator=generator), torch.arange(n),
                  torch.randint(0, 2**31, (n,), generator=generator)) for n in sizes]


# --------------------------------------------------------------------------------------------
# sections: what is compared runs interleaved (A B A B ...), so a burst of load from other jobs
# hits both sides alike; steady-state numbers are the best of the repeats
# --------------------------------------------------------------------------------------------

def section_loading(sets: list[tuple[str, Path, list[Sample]]], workers: int, scratch: Path) -> list[dict]:
    """(a) images/s into training batches: lecture vs cnnlab, first and later epochs."""
    rows = []
    for name, class_root, samples in sets:
        n = len(samples)
        cache_dir = scratch / f"cache-{name}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        lecture = lecture_loader(class_root, samples, workers)
        lecture_times = [one_epoch(lecture, 1)]
        ours, build = cnnlab_loader(samples, workers, "disk", str(cache_dir))
        our_times = [one_epoch(ours, 1)]
        for epoch in (2, 3, 4):
            lecture_times.append(one_epoch(lecture, epoch))
            our_times.append(one_epoch(ours, epoch))
        del lecture, ours  # stop their workers
        uncached = one_epoch(cnnlab_loader(samples, workers, "off", None)[0], 1)
        crop_loader = cnnlab_loader(samples, workers, "disk", str(cache_dir),
                                    Preprocessing.for_size(IMG_SIZE).eval_transform())[0]
        crop_only = min(one_epoch(crop_loader, epoch, pipeline=device_pipeline(augment=False)) for epoch in (1, 2))
        del crop_loader
        row = {"data": name, "images": n,
               "lecture_first": n / lecture_times[0], "lecture_later": n / min(lecture_times[1:]),
               "cnnlab_uncached": n / uncached,
               "cnnlab_first": n / (build + our_times[0]), "cache_build": build,
               "cnnlab_later": n / min(our_times[1:]), "cache_crop_only": n / crop_only,
               "disk_mb": sum(f.stat().st_size for f in cache_dir.rglob("*.u8")) / 1e6}
        row["ratio_first"] = row["cnnlab_first"] / row["lecture_first"]
        row["ratio_later"] = row["cnnlab_later"] / row["lecture_later"]
        rows.append(row)
        print(f"(a) {name}: lecture {row['lecture_first']:.0f}/{row['lecture_later']:.0f} img/s, cnnlab "
              f"{row['cnnlab_first']:.0f}/{row['cnnlab_later']:.0f} img/s", file=sys.stderr, flush=True)
    return rows


def _ms(function, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of function() in milliseconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def section_breakdown(sets: list[tuple[str, Path, list[Sample]]], scratch: Path, images: int = 4) -> list[dict]:
    """Where the time of one image goes, on one core (as in a DataLoader worker), in ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lecture_augment = T.Compose(lecture_transform(IMG_SIZE).transforms[1:])  # after the Resize
    workers_part = train_transform("default", IMG_SIZE, augment_on="device")  # resize + random crop
    per_image = train_transform("default", IMG_SIZE, augment_on="workers")  # the whole preset, per image
    pipeline = device_pipeline()
    batch = uint8_batches(BATCH_SIZE)[0]
    # the device part for a whole batch, divided by its size: what one image costs there
    batch_ms = _ms(lambda: pipeline(batch.images, batch.seeds, train=True)) / BATCH_SIZE
    rows = []
    try:
        for name, _, samples in sets:
            paths = [s.path for s in samples[:images]]
            cached = open_cache(paths, decode_size(IMG_SIZE), "disk", cache_dir=str(scratch / "breakdown"),
                                verbose=False)
            costs = {key: [] for key in ("decode_full", "resize_full", "augment_pil", "decode_reduced",
                                         "cache_read", "worker_crop", "per_image_tensor")}
            for i, path in enumerate(paths):
                # the lecture opens files with PIL directly, as ImageFolder does
                costs["decode_full"].append(_ms(lambda: Image.open(path).convert("RGB")))
                full = Image.open(path).convert("RGB")
                costs["resize_full"].append(_ms(lambda: T.Resize(decode_size(IMG_SIZE))(full)))
                small = T.Resize(decode_size(IMG_SIZE))(full)
                costs["augment_pil"].append(_ms(lambda: lecture_augment(small)))
                costs["decode_reduced"].append(_ms(lambda: decode_for_cache(path, decode_size(IMG_SIZE))))
                costs["cache_read"].append(_ms(lambda: cached.load(i)))
                image = cached.load(i)
                costs["worker_crop"].append(_ms(lambda: workers_part(image)))
                costs["per_image_tensor"].append(_ms(lambda: per_image(image)))
            rows.append({"data": name, "batch_augment": batch_ms}
                        | {key: float(np.median(values)) for key, values in costs.items()})
            print(f"(a') {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[-1].items() if k != "data"),
                  file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def section_compute(models: list[str], rounds: int, threads: int | None = None,
                    variants: tuple[str, ...] = ("fp32_nchw", "fp32_cl", "auto")) -> list[dict]:
    """(b) training images/s on in-memory tensors: fp32 NCHW (lecture), fp32 channels_last, auto.

    With `threads`, torch runs on that many threads: one thread shows the per-core ratio, which
    other jobs on the machine disturb far less than two threads meeting at every barrier.
    """
    options = {"fp32_nchw": ("fp32", False), "fp32_cl": ("fp32", True), "auto": ("auto", None)}
    variants = {label: options[label] for label in variants}
    rows = []
    saved_threads = torch.get_num_threads()
    for model_name in models:
        torch.set_num_threads(threads or saved_threads)
        steps = {label: trainer(model_name, *options) for label, options in variants.items()}
        batches = random_batches(BATCH_SIZE * (rounds + 1))
        times = {label: [] for label in variants}
        for round_number, (images, labels) in enumerate(batches):
            for label, (step, _) in steps.items():
                start = time.perf_counter()
                step(images, labels)
                if round_number > 0:  # the first batch of each is a warm-up (oneDNN picks its kernels)
                    times[label].append(time.perf_counter() - start)
        torch.set_num_threads(saved_threads)
        row = {"model": model_name + (f" ({threads} thread)" if threads else "")} | {
            label: BATCH_SIZE / min(times[label]) for label in variants}
        auto = steps["auto"][1]
        row["auto_is"] = auto.name + (" + channels_last" if auto.channels_last else "")
        row["ratio_auto"] = row["auto"] / row["fp32_nchw"]
        row["ratio_auto_cl"] = row["auto"] / row["fp32_cl"] if "fp32_cl" in row else float("nan")
        rows.append(row)
        del steps
        print(f"(b) {row['model']}: " + ", ".join(f"{label} {row[label]:.1f}" for label in variants) + " img/s",
              file=sys.stderr, flush=True)
    return rows


def section_fraction(name: str, samples: list[Sample], models: list[str], workers: int, scratch: Path,
                     rounds: int) -> list[dict]:
    """(c) epoch time on real files (cached, after a warm-up epoch) vs the same steps on in-memory batches.

    Both sides run the same device pipeline (uint8 -> float, batch augmentation, normalise) and the same
    training step, so the fraction is what reading, cropping and the workers cost the training.
    """
    rows = []
    cache_dir = scratch / f"cache-{name}"  # built in (a)
    pipeline = device_pipeline()
    for model_name in models:
        step, _ = trainer(model_name, "auto")
        loader, _ = cnnlab_loader(samples, workers, "disk", str(cache_dir))
        batches = uint8_batches(len(samples))
        one_epoch(loader, 1, step, pipeline)  # warm-up: starts the workers, picks the kernels
        real, memory = [], []
        for epoch in range(2, 2 + rounds):
            real.append(one_epoch(loader, epoch, step, pipeline))
            memory.append(memory_epoch(batches, step, pipeline))
        del loader
        row = {"model": model_name, "data": name, "images": len(samples), "real_epoch": min(real),
               "memory_epoch": min(memory)}
        row["fraction"] = row["memory_epoch"] / row["real_epoch"]
        rows.append(row)
        print(f"(c) {model_name}: real {row['real_epoch']:.2f}s, in-memory {row['memory_epoch']:.2f}s",
              file=sys.stderr, flush=True)
    return rows


def section_workers(name: str, samples: list[Sample], model_name: str, scratch: Path, rounds: int) -> list[dict]:
    """(d) epoch time with 0, 1, 2 workers, cached and uncached, training `model_name` with auto precision."""
    cache_dir = scratch / f"cache-{name}"
    configs = [(cache, workers) for cache in ("disk", "off") for workers in (0, 1, 2)]
    runs = {config: (cnnlab_loader(samples, config[1], config[0], str(cache_dir))[0], trainer(model_name, "auto")[0])
            for config in configs}
    times = {config: [] for config in configs}
    for epoch in range(1, 2 + rounds):  # epoch 1 of each is a warm-up
        for config, (loader, step) in runs.items():
            seconds = one_epoch(loader, epoch, step)
            if epoch > 1:
                times[config].append(seconds)
    del runs
    rows = [{"cache": cache, "workers": workers, "epoch": min(times[cache, workers]),
             "rate": len(samples) / min(times[cache, workers])} for cache, workers in configs]
    for row in rows:
        print(f"(d) cache {row['cache']}, {row['workers']} workers: {row['rate']:.1f} img/s", file=sys.stderr,
              flush=True)
    return rows


def lecture_train(root: Path, epochs: int, model_name: str) -> None:
    """The lecture's whole job as its own process: ImageFolder, an 80/20 split, PIL transforms v1 on full-size
    decodes every epoch, DataLoader(batch 32, shuffle), AdamW, a validation pass per epoch (fp32, as
    cnnlab's auto picks on a CPU without fast bf16; the same precision cnnlab uses)."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    precision = resolve_precision("auto", device)
    train_set = torchvision.datasets.ImageFolder(str(root), transform=lecture_transform(IMG_SIZE))
    val_set = torchvision.datasets.ImageFolder(str(root), transform=T.Compose([
        T.Resize(decode_size(IMG_SIZE)), T.CenterCrop(IMG_SIZE), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    order = torch.randperm(len(train_set)).tolist()
    cut = int(len(order) * 0.8)
    workers = default_workers()
    train_loader = DataLoader(torch.utils.data.Subset(train_set, order[:cut]), batch_size=BATCH_SIZE, shuffle=True,
                              num_workers=workers, persistent_workers=workers > 0)
    val_loader = DataLoader(torch.utils.data.Subset(val_set, order[cut:]), batch_size=BATCH_SIZE,
                            num_workers=workers, persistent_workers=workers > 0)
    model = create_model(model_name, len(train_set.classes), img_size=IMG_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        model.train()
        for images, labels in train_loader:
            with precision.autocast(device):
                loss = nn.functional.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += int((model(images).argmax(1) == labels).sum())
        print(f"epoch {epoch + 1}: val accuracy {correct / max(1, len(val_loader.dataset)):.3f}", flush=True)


def _process_seconds(command: list[str], env: dict | None = None) -> float:
    """Wall time of a whole process, from exec to exit (imports, workers, files included)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def section_whole(root: Path, epochs: int, scratch: Path, rounds: int) -> list[dict]:
    """(e) whole processes training `epochs` epochs at 224 px on `root` from a cold cache, interleaved:
    the lecture's script, `cnnlab train` with the lecture's network (simple_cnn) and with every default."""
    cli = str(Path(sys.executable).with_name("cnnlab"))
    variants = {
        "lecture (simple_cnn)": lambda i: [sys.executable, __file__, "--lecture-train", str(root), "--epochs",
                                           str(epochs)],
        "cnnlab --model simple_cnn": lambda i: [cli, "train", "--data", str(root), "--epochs", str(epochs),
                                                "--img-size", str(IMG_SIZE), "--model", "simple_cnn",
                                                "--cache-dir", str(scratch / f"whole-cache-a{i}"),
                                                "--out", str(scratch / f"whole-run-a{i}")],
        "cnnlab (defaults: resnet9)": lambda i: [cli, "train", "--data", str(root), "--epochs", str(epochs),
                                                 "--img-size", str(IMG_SIZE),
                                                 "--cache-dir", str(scratch / f"whole-cache-b{i}"),
                                                 "--out", str(scratch / f"whole-run-b{i}")],
    }
    times = {name: [] for name in variants}
    for i in range(rounds):
        for name, command in variants.items():
            times[name].append(_process_seconds(command(i)))  # a fresh cache folder each time: cold
            print(f"(e) {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    lecture = min(times["lecture (simple_cnn)"])
    return [{"variant": name, "seconds": min(values), "ratio": lecture / min(values)} for name, values in times.items()]


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def machine() -> dict:
    """CPU model, cores, libraries, date and load: what the numbers depend on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "fast_bf16": cpu_has_fast_bf16(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo": features.check_feature("libjpeg_turbo"), "python": platform.python_version(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()}


def _verdict(value: float, target: float, why: str, unit: str = "x") -> str:
    if value >= target:
        return f"met ({value:.2f}{unit} >= {target}{unit})"
    return f"**missed** by {(1 - value / target) * 100:.0f} % ({value:.2f}{unit} < {target}{unit}): {why}"


def report(info: dict, args, loading, breakdown, compute, fraction, workers_rows, whole, whole_data,
           seconds: float) -> str:
    """The results as Markdown: tables, then each target met or missed (and why)."""
    lines = ["# Large images: the lecture's pipeline vs cnnlab", "",
             f"Generated by `benchmarks/large_images.py{' --quick' if args.quick else ''}"
             f"{' --data ' + args.data if args.data else ''}{f' --limit {args.limit}' if args.limit else ''}` "
             f"in {seconds / 60:.1f} min.", "",
             "| machine | |", "|---|---|"]
    for key in ("cpu", "cores", "fast_bf16", "torch", "torchvision", "pillow", "libjpeg_turbo", "python", "date"):
        lines.append(f"| {key} | {info[key]} |")
    lines.append(f"| load average at start / end | {info['load'][0]:.1f} / {os.getloadavg()[0]:.1f} "
                 f"(other jobs share these cores: absolute numbers vary, the side-by-side ratios less) |")
    lines += ["", f"Batch size {BATCH_SIZE}, crops of {IMG_SIZE} px, {args.workers} DataLoader workers for both "
              f"pipelines in (a), cnnlab's default ({default_workers()}) in (c); cache short side "
              f"{decode_size(IMG_SIZE)} px.", "",
              "## (a) Data loading into training batches (images/s, higher is better)", "",
              "| data | images | lecture epoch 1 | lecture epochs 2-4 | cnnlab uncached "
              "| cnnlab epoch 1 (cache build incl.) "
              "| cnnlab epochs 2-4 | **ratio epoch 1** | **ratio later** | cache only, crop (no rotation/jitter) "
              "| cache build | cache on disk |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in loading:
        lines.append(f"| {r['data']} | {r['images']} | {r['lecture_first']:.0f} | {r['lecture_later']:.0f} | "
                     f"{r['cnnlab_uncached']:.0f} | {r['cnnlab_first']:.0f} | {r['cnnlab_later']:.0f} | "
                     f"**{r['ratio_first']:.1f}x** | **{r['ratio_later']:.1f}x** | {r['cache_crop_only']:.0f} "
                     f"({r['cache_crop_only'] / r['lecture_later']:.0f}x) | {r['cache_build']:.1f} s | "
                     f"{r['disk_mb']:.1f} MB |")
    lines += ["", "## (a') Where the time of one image goes (ms, one core, median of 4 images)", "",
              "cnnlab's default (`--augment-on device`): a worker reads the cached image and crops it; flip, "
              "rotation and colour jitter run once per batch on the training device (here the same CPU), "
              "shown per image (a batch of 32 divided by 32). The per-image tensor path (`--augment-on "
              "workers`) is shown for comparison.", "",
              "| data | lecture: full decode | + resize to 256 | + PIL augmentation | **lecture total** "
              "| cnnlab: reduced decode + resize (cache build) | cache read | worker crop | batch augmentation "
              "per image | **cnnlab cached total** | per-image tensor augmentation (`--augment-on workers`) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in breakdown:
        lecture = r["decode_full"] + r["resize_full"] + r["augment_pil"]
        cached = r["cache_read"] + r["worker_crop"] + r["batch_augment"]
        lines.append(f"| {r['data']} | {r['decode_full']:.1f} | {r['resize_full']:.1f} | {r['augment_pil']:.1f} | "
                     f"**{lecture:.1f}** | {r['decode_reduced']:.1f} (lecture / this: "
                     f"{lecture / r['decode_reduced']:.1f}x) | {r['cache_read']:.2f} | {r['worker_crop']:.2f} | "
                     f"{r['batch_augment']:.2f} | **{cached:.2f}** (lecture / this: {lecture / cached:.0f}x) | "
                     f"{r['per_image_tensor']:.1f} |")
    lines += ["", "## (b) Training compute at 224 px on in-memory tensors (images/s)", "",
              "| model | fp32 NCHW (lecture) | fp32 channels_last | auto | auto is | **auto / fp32** "
              "| auto / fp32 channels_last | epoch of 1,000 images: fp32 / auto |",
              "|---|---|---|---|---|---|---|---|"]
    for r in compute:
        fp32_cl = f"{r['fp32_cl']:.1f}" if "fp32_cl" in r else "-"
        ratio_cl = f"{r['ratio_auto_cl']:.2f}x" if "fp32_cl" in r else "-"
        lines.append(f"| {r['model']} | {r['fp32_nchw']:.1f} | {fp32_cl} | {r['auto']:.1f} | {r['auto_is']} "
                     f"| **{r['ratio_auto']:.2f}x** | {ratio_cl} | {1000 / r['fp32_nchw']:.0f} s / "
                     f"{1000 / r['auto']:.0f} s |")
    lines += ["", "## (c) Compute-bound fraction", "",
              "cnnlab, auto precision, cached files; the best epoch after a warm-up epoch. Both sides run the "
              "same device pipeline (batch augmentation, normalisation) and training step: the fraction is what "
              "reading files, cropping and the workers cost.", "",
              "| model | data | images | epoch on real files | same steps on in-memory tensors | **fraction** |",
              "|---|---|---|---|---|---|"]
    for r in fraction:
        lines.append(f"| {r['model']} | {r['data']} | {r['images']} | {r['real_epoch']:.2f} s | "
                     f"{r['memory_epoch']:.2f} s | **{r['fraction'] * 100:.0f} %** |")
    if workers_rows:
        lines += ["", "## (d) DataLoader workers", "",
                  f"Training {args.workers_model} with auto precision; the best epoch after a warm-up epoch.", "",
                  "| cache | workers | epoch | images/s |", "|---|---|---|---|"]
        for r in workers_rows:
            lines.append(f"| {r['cache']} | {r['workers']} | {r['epoch']:.2f} s | {r['rate']:.1f} |")
        best = {cache: max((r for r in workers_rows if r["cache"] == cache), key=lambda r: r["rate"])["workers"]
                for cache in ("disk", "off")}
        lines += ["", f"Fastest here: {best['disk']} worker(s) with the cache, {best['off']} without; "
                  f"`device.default_workers()` picks {default_workers()} on this machine."]
    if whole:
        lines += ["", f"## (e) Whole process: {args.whole_epochs} epochs at {IMG_SIZE} px, cold cache", "",
                  f"`{whole_data}`, 80/20 split, a validation pass per epoch; each a fresh process (imports, "
                  "workers, cache build and, for cnnlab, the run folder's files included); best of "
                  f"{args.whole_rounds}.", "",
                  "| process | seconds | **lecture / this** |", "|---|---|---|"]
        for r in whole:
            lines.append(f"| {r['variant']} | {r['seconds']:.1f} | **{r['ratio']:.1f}x** |")
    lines += ["", "## Targets", ""]
    costs = {r["data"]: r for r in breakdown}
    large = [r for r in loading if r["data"].startswith(("shapes-2000", "shapes-4000"))] or loading
    for r in large:
        c = costs[r["data"]]
        lines.append(f"- first-epoch loading, {r['data']}: " + _verdict(
            r["ratio_first"], TARGETS["first_epoch"],
            f"cnnlab's first epoch spends {c['decode_reduced']:.1f} ms per image building the cache (the "
            "DCT-domain reduction skips the inverse transform of the discarded detail, not the entropy "
            "decoding of the whole file)"))
        lines.append(f"- cached epochs, {r['data']}: " + _verdict(
            r["ratio_later"], TARGETS["cached_epoch"],
            f"per image: cache read {c['cache_read']:.2f} ms, worker crop {c['worker_crop']:.2f} ms, batch "
            f"augmentation {c['batch_augment']:.2f} ms; with a crop only the loader delivers "
            f"{r['cache_crop_only']:.0f} img/s ({r['cache_crop_only'] / r['lecture_later']:.0f}x the lecture): "
            "what is left is the augmentation itself, done on the cores that also feed the loop"))
    for r in compute:
        if r["model"].startswith("resnet18") and info["fast_bf16"]:
            lines.append(f"- {r['model']} training, auto vs fp32: " + _verdict(
                r["ratio_auto"], TARGETS["auto_vs_fp32"],
                "batch norm, ReLU, pooling and the optimizer stay memory-bound and gain far less than the "
                "matrix products"))
    if not info["fast_bf16"]:
        lines.append("- auto vs fp32: not applicable here: this CPU has no AVX-512 BF16 or AMX, so `auto` "
                     "picks fp32 (bf16 would run ~100x slower in emulation)")
    for r in fraction:
        lines.append(f"- training on real files vs in-memory, {r['model']}: " + _verdict(
            r["fraction"] * 100, TARGETS["compute_fraction"] * 100,
            "the DataLoader workers read and crop on the same 2 cores the model trains on, and each epoch "
            "starts by waiting for its first batch, as the workers' queues are empty", unit=" %"))
    for r in whole:
        if r["variant"].startswith("cnnlab"):
            lines.append(f"- whole process, {r['variant']}: " + _verdict(
                r["ratio"], TARGETS["whole_process"],
                "the fixed cost of a process (imports, starting workers, writing the run folder's report "
                "and plots) does not shrink with the data; see (e)"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="run on this image folder instead of generated JPEGs")
    parser.add_argument("--limit", type=int, help="use at most this many training images of --data")
    parser.add_argument("--quick", action="store_true", help="fewer images and batches (about 3 minutes)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="DataLoader workers of both pipelines in (a): default every core, for the most "
                             "each pipeline can load; (c) uses cnnlab's default_workers()")
    parser.add_argument("--workers-model", default="simple_cnn", help="model trained in section (d)")
    parser.add_argument("--skip-workers", action="store_true", help="skip section (d)")
    parser.add_argument("--whole-epochs", type=int, default=5, help="epochs of the whole-process runs in (e)")
    parser.add_argument("--whole-rounds", type=int, default=2, help="repeats of (e); the best counts")
    parser.add_argument("--skip-whole", action="store_true", help="skip section (e)")
    parser.add_argument("--lecture-train", metavar="FOLDER", help=argparse.SUPPRESS)  # (e)'s lecture process
    parser.add_argument("--epochs", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="Markdown report (default benchmarks/results/large_images.md)")
    args = parser.parse_args(argv)
    if args.lecture_train:
        lecture_train(Path(args.lecture_train), args.epochs, "simple_cnn")
        return
    started = time.perf_counter()
    info = machine()

    if args.data:
        class_root, samples = folder_samples(Path(args.data), args.limit)
        sets = [(Path(args.data).name, class_root, samples)]
    else:
        sets = []
        for width, height, count in (QUICK_SIZES if args.quick else SIZES):
            root = generated_dataset(width, height, count)
            sets.append((root.name, root, find_samples(root, val_fraction=0.2).splits["train"]
                         + find_samples(root, val_fraction=0.2).splits["val"]))
    scratch = Path(tempfile.mkdtemp(prefix="cache-", dir=DATA_DIR if DATA_DIR.exists() else None))
    try:
        loading = section_loading(sets, args.workers, scratch)
        breakdown = section_breakdown(sets, scratch)
        rounds = 1 if args.quick else 2
        compute = section_compute(["simple_cnn", "resnet9", "resnet18"], rounds=rounds + 1)
        if info["fast_bf16"]:
            compute += section_compute(["resnet18"], rounds=rounds, threads=1, variants=("fp32_nchw", "auto"))
        name, _, samples = sets[min(1, len(sets) - 1)]  # 2000x1500, or the --data folder
        samples = samples[:FRACTION_IMAGES]
        fraction = section_fraction(name, samples, ["resnet9", "simple_cnn"], default_workers(), scratch, rounds)
        workers_rows = [] if args.skip_workers else section_workers(name, samples, args.workers_model, scratch,
                                                                    rounds)
        whole_root = sets[-1][1]  # the largest generated JPEGs, or the --data folder
        whole = [] if args.skip_whole else section_whole(whole_root, args.whole_epochs, scratch, args.whole_rounds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out) if args.out else RESULTS_DIR / "large_images.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(info, args, loading, breakdown, compute, fraction, workers_rows, whole,
                          whole_root.name, time.perf_counter() - started))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
