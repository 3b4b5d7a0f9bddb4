"""Time to accuracy: the lecture's pipeline against cnnlab's defaults, same data, same wall-clock budgets (not a test).

    .venv/bin/python benchmarks/time_to_accuracy.py [--data ../shared/data/clothing-small] [--budgets 1,2,5]

Both run in this one process, interleaved (lecture 1 min, cnnlab 1 min, lecture 2 min, ...), so a machine whose
speed drifts slows both alike. Each budget is a separate run whose learning-rate schedule ends at the budget:

  lecture  the seed's pipeline as written: torchvision ImageFolder + PIL transforms v1 (RandomHorizontalFlip,
           RandomRotation(10), RandomResizedCrop(S, scale=(0.8, 1)), ColorJitter(0.2, 0.2, 0.2, 0.1), ToTensor,
           Normalize), DataLoader(batch 32, shuffle), a plain 4-block convnet (conv3x3-BN-ReLU-maxpool x4,
           global pooling, dropout 0.5, linear), AdamW with PyTorch's OneCycleLR; its number of steps is set
           from the speed of its first steps so that it ends at the budget (as cnnlab's --time does).
  cnnlab   `cnnlab train --data DIR --time <budget>`: every default (resnet9, batch augmentation on the device,
           decoded-image cache, label smoothing, weight average, progressive resizing, class balance).

Accuracy is the final model's on the validation split (cnnlab: its last epoch, not the best one, so neither
side gets to pick). Both use the precision cnnlab's `auto` picks on this machine, and the same image side.
A second section measures the training step's arithmetic rate against the machine's measured peak.
Results go to benchmarks/results/time_to_accuracy.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from cnnlab.commands.train import fit
from cnnlab.models import create_model
from cnnlab.models.summary import summarize_model
from cnnlab.training.device import default_workers, resolve_precision

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "time_to_accuracy.md"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "clothing-small"
IMG_SIZE = 128  # cnnlab's default --img-size; the lecture pipeline uses the same
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# the lecture's pipeline
# --------------------------------------------------------------------------------------------

def lecture_model(num_classes: int) -> nn.Module:
    """A plain convnet as the lecture builds them: four conv3x3-BN-ReLU-maxpool blocks, pooling, dropout, linear."""
    layers, channels = [], 3
    for width in (32, 64, 128, 256):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(channels, num_classes))


def lecture_loaders(data: Path, img_size: int, workers: int) -> tuple[DataLoader, DataLoader, int]:
    train_tf = T.Compose([T.RandomHorizontalFlip(p=0.5), T.RandomRotation(10),
                          T.RandomResizedCrop(img_size, scale=(0.8, 1.0)),
                          T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
                          T.ToTensor(), T.Normalize(MEAN, STD)])
    val_tf = T.Compose([T.Resize(img_size), T.CenterCrop(img_size), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = ImageFolder(data / "train", transform=train_tf)
    val = ImageFolder(data / ("validation" if (data / "validation").is_dir() else "val"), transform=val_tf)
    return (DataLoader(train, batch_size=32, shuffle=True, num_workers=workers, persistent_workers=workers > 0),
            DataLoader(val, batch_size=64, num_workers=workers), len(train.classes))


def run_lecture(data: Path, budget: float, lr: float = 2e-3) -> dict:
    """Train for `budget` seconds with the lecture's pipeline; a one-cycle schedule sized to end at the budget."""
    start = time.monotonic()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    train_loader, val_loader, classes = lecture_loaders(data, IMG_SIZE, default_workers())
    model = lecture_model(classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def step(images, labels):
        with precision.autocast(device):
            loss = loss_fn(model(images.to(device)).float(), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    # time a few steps (at a tiny learning rate), then size the schedule to the budget, as --time does
    for group in optimizer.param_groups:
        group["lr"] = lr / 1000
    batches, timed = iter(train_loader), []
    for k in range(6):
        t = time.monotonic()
        step(*next(batches))
        if k:
            timed.append(time.monotonic() - t)
    per_step = sum(timed) / len(timed)
    validation = per_step / 3 * len(val_loader) * 2  # forward only, larger batches
    total_steps = max(1, int((budget - (time.monotonic() - start) - validation - 2) / per_step))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    model.train()
    steps, images, began = 0, 0, time.monotonic()
    while steps < total_steps and time.monotonic() - start < budget - validation:
        for inputs, labels in train_loader:
            step(inputs, labels)
            schedule.step()
            steps, images = steps + 1, images + len(labels)
            if steps >= total_steps or time.monotonic() - start > budget - validation:
                break
    train_time = time.monotonic() - began  # loading waits included, as in cnnlab's epoch times
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for inputs, labels in val_loader:
            with precision.autocast(device):
                correct += (model(inputs.to(device)).argmax(1).cpu() == labels).sum().item()
            seen += len(labels)
    result = {"accuracy": correct / seen, "seconds": time.monotonic() - start,
              "images_per_second": images / max(train_time, 1e-9), "epochs": images / len(train_loader.dataset),
              "steps": steps}
    del batches, train_loader, val_loader  # end the persistent workers now, not when the next run competes with them
    gc.collect()
    return result


# --------------------------------------------------------------------------------------------
# cnnlab's defaults
# --------------------------------------------------------------------------------------------

def run_cnnlab(data: Path, budget: float, out: Path) -> dict:
    """`cnnlab train --data DATA --time BUDGET` with every default."""
    start = time.monotonic()
    result = fit(data=str(data), time=f"{budget:g}s", out=str(out), verbose=False)
    seconds = time.monotonic() - start
    trained = sum(row["seconds"] for row in result.history)  # each epoch's training and validation
    per_epoch = sum(json.loads((out / "dataset.json").read_text())["counts"]["train"].values())
    images = per_epoch * len(result.history)
    return {"accuracy": result.history[-1]["val_acc"], "seconds": seconds,
            "images_per_second": images / max(trained, 1e-9), "epochs": len(result.history),
            "best_accuracy": result.best_val_acc, "verdict": result.diagnosis.verdict.label}


# --------------------------------------------------------------------------------------------
# the training step against the machine's peak
# --------------------------------------------------------------------------------------------

def peak_flops(dtype: torch.dtype, device: torch.device) -> float:
    """The best of a few large matrix products: what this device's multiply units deliver, FLOP/s."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    best = math.inf
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def step_flops(name: str, img_size: int, batch: int, device: torch.device, options: dict | None = None) -> dict:
    """Training step (forward, backward, AdamW) on an in-memory batch: images/s and FLOP/s (3 x forward MACs x 2)."""
    options = options or {}
    precision = resolve_precision("auto", device)
    model = create_model(name, 10, img_size=img_size, **options).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    macs = summarize_model(name, (3, img_size, img_size), 10, img_size=img_size, **options).total_macs
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with precision.autocast(device):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for _ in range(2):
        step()
    best = math.inf
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return {"model": name, "options": options, "images_per_second": batch / best,
            "flops": 3 * 2 * macs * batch / best, "precision": precision.name}


def efficiency(device: torch.device) -> list[dict]:
    precision = resolve_precision("auto", device)
    dtype = precision.autocast_dtype or torch.float32
    peak = peak_flops(dtype, device)
    rows = []
    for name, options in (("resnet9", {}), ("simple_cnn", {}), ("resnet18", {})):
        for size in (128, 224):
            row = step_flops(name, size, 64, device, options)
            rows.append(row | {"img_size": size, "peak": peak, "fraction": row["flops"] / peak})
    return rows


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def machine() -> str:
    precision = resolve_precision("auto", torch.device("cpu"))
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}; cnnlab's auto precision on this CPU: {precision.name}")


def write(results: dict, rows: list[dict], budgets: list[float], data: Path, started: str) -> str:
    lines = ["# Time to accuracy: the lecture's pipeline vs cnnlab's defaults", "",
             f"`.venv/bin/python benchmarks/time_to_accuracy.py --data {data} --budgets "
             f"{','.join(f'{b:g}' for b in budgets)}` — {started}; {machine()}.", "",
             f"Data: {data.name}, validation split; images at {IMG_SIZE} px for both. Each cell is a separate run whose "
             "schedule ends at the budget; accuracy of the final model (cnnlab: last epoch).", "",
             "| budget | lecture accuracy | cnnlab accuracy | difference | lecture img/s | cnnlab img/s | lecture epochs | "
             "cnnlab epochs | cnnlab verdict |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for budget in budgets:
        lec, cnn = results[budget]["lecture"], results[budget]["cnnlab"]
        lines.append(f"| {budget:g} min | {100 * lec['accuracy']:.1f}% | {100 * cnn['accuracy']:.1f}% | "
                     f"{100 * (cnn['accuracy'] - lec['accuracy']):+.1f} points | {lec['images_per_second']:.0f} | "
                     f"{cnn['images_per_second']:.0f} | {lec['epochs']:.1f} | {cnn['epochs']} | {cnn['verdict']} |")
    longest = max(budgets)
    final = results[longest]["lecture"]["accuracy"]
    reached = [b for b in budgets if results[b]["cnnlab"]["accuracy"] >= final]
    lines += ["", f"The lecture pipeline's final accuracy ({100 * final:.1f}% after {longest:g} min) is reached by cnnlab "
              + (f"with a {min(reached):g}-minute budget ({min(reached) / longest:.0%} of the time)." if reached
                 else "within none of the budgets measured."), "",
              "## The training step against the machine's peak", "",
              "In-memory batches of 64, forward + backward + AdamW, the precision `auto` picks; FLOP/s = 3 x forward "
              "multiply-accumulates x 2 / step time; peak = best large matrix product in that precision.", "",
              "| model | image side | img/s | GFLOP/s | peak GFLOP/s | fraction of peak |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['img_size']} | {row['images_per_second']:.1f} | {row['flops'] / 1e9:.1f} | "
                     f"{row['peak'] / 1e9:.1f} | {100 * row['fraction']:.0f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budgets", default="1,2,5", help="minutes, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    budgets = [float(b) for b in args.budgets.split(",")]
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            results[budget] = {}
            for name in ("lecture", "cnnlab"):
                print(f"{name}, {budget:g} min ...", file=sys.stderr, flush=True)
                if name == "lecture":
                    results[budget][name] = run_lecture(args.data, budget * 60)
                else:
                    results[budget][name] = run_cnnlab(args.data, budget * 60, Path(tmp) / f"run-{budget:g}")
                print(f"  {results[budget][name]}", file=sys.stderr, flush=True)
    rows = efficiency(torch.device("cpu"))
    text = write(results, rows, budgets, args.data, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps({"results": {str(k): v for k, v in results.items()},
                                                         "efficiency": rows}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
