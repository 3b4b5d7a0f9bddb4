"""Are the installed EfficientNet-Lite0 ImageNet weights mapped right? A linear probe says (not a test).

    .venv/bin/python benchmarks/pretrained_probe.py [--data ../shared/data/clothing-small] [--train-per-class 30]

Frozen features (the 1280-d global average of features(x)) + a linear head (multinomial logistic regression,
L-BFGS on the cached features, L2 strength chosen by 5-fold cross-validation on the training images only) on a
real photo folder, for:
  pretrained     `create_model("efficientnet_lite0", pretrained=True)` as cnnlab ships it: timm's
                 tf_efficientnet_lite0 (TensorFlow's "same" padding), inputs in [-1, 1]
  random         the same architecture with timm's random initialisation (the floor a wrong mapping falls to)
  ImageNet norm  the pretrained weights with ImageNet's mean/std instead of [-1, 1]
  symmetric pad  the same tensors in timm's efficientnet_lite0 (PyTorch's symmetric padding, BatchNorm eps 1e-5)
A mapping that put a tensor in the wrong place would fall towards `random`; the two checks of padding and
normalisation say which of the nearly right variants the weights were trained with.

Images: cnnlab's own evaluation preprocessing (short side to S, central S x S crop), decoded once. The head is
trained on `--train-per-class` images per class drawn from the train split (seed 0; fewer than all because every
configuration runs the network over every image: about 5 minutes each at 224 px on 2 busy shared cores) and
evaluated on the whole validation and test splits, with the 95% Wilson interval. Results: benchmarks/results/pretrained_probe.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import cnnlab
from cnnlab.data.dataset import ImageDataset, collate_skip_bad
from cnnlab.data.folders import find_samples
from cnnlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, decode_size, eval_transform, normalize
from cnnlab.models import create_model, input_normalization
from cnnlab.models.efficientnet_lite import EfficientNetLite, imagenet_state_dict
from cnnlab.runs.diagnosis import wilson_interval

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pretrained_probe.md"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "clothing-small"
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # per-sample L2 strengths tried by cross-validation (features standardised)
FOLDS = 5


def draw_training_subset(samples: list, per_class: int, seed: int = 0) -> list:
    """Up to `per_class` samples of each class, drawn at random (seeded)."""
    by_class: dict[int, list] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    rng = random.Random(seed)
    return [s for label in sorted(by_class) for s in rng.sample(by_class[label], min(per_class, len(by_class[label])))]


def decode(samples: list, img_size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, S, S) images as cnnlab evaluates them, and their labels (N,); unreadable files left out."""
    dataset = ImageDataset(samples, eval_transform(Preprocessing.for_size(img_size)), decode_size=decode_size(img_size))
    images, labels = [], []
    for batch in DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate_skip_bad):
        images.append(batch.images)
        labels.append(batch.labels)
    return torch.cat(images), torch.cat(labels)


@torch.inference_mode()
def pooled_features(model: torch.nn.Module, images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """(N, 1280) global averages of model.features over uint8 `images`, normalised with mean/std."""
    model.eval()
    out = []
    for start in range(0, len(images), 32):
        x = normalize(images[start:start + 32].float() / 255, mean, std)
        out.append(model.features(x).mean((2, 3)))
    return torch.cat(out)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch L-BFGS, L2 penalty `l2` on the weights."""
    torch.manual_seed(0)
    head = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=100, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), labels) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return head


def accuracy(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    with torch.no_grad():
        return int((head(features).argmax(1) == labels).sum()), len(labels)


def choose_l2(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """The L2 strength of L2_GRID with the best 5-fold cross-validated accuracy on the training features."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    folds = order.chunk(FOLDS)
    scores = {}
    for l2 in L2_GRID:
        right = 0
        for k in range(FOLDS):
            train = torch.cat([folds[j] for j in range(FOLDS) if j != k])
            head = fit_linear(features[train], labels[train], classes, l2)
            right += accuracy(head, features[folds[k]], labels[folds[k]])[0]
        scores[l2] = right
    return max(L2_GRID, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty


def probe(model, splits: dict, classes: int, mean: tuple, std: tuple) -> dict:
    """Train the head on the training features, evaluate on validation and test."""
    feats = {name: pooled_features(model, images, mean, std) for name, (images, _) in splits.items()}
    centre, scale = feats["train"].mean(0), feats["train"].std(0) + 1e-6  # standardised with training statistics
    feats = {name: (f - centre) / scale for name, f in feats.items()}
    labels = {name: lab for name, (_, lab) in splits.items()}
    l2 = choose_l2(feats["train"], labels["train"], classes)
    head = fit_linear(feats["train"], labels["train"], classes, l2)
    return {"l2": l2, **{name: accuracy(head, feats[name], labels[name]) for name in ("val", "test")}}


def symmetric_padding_model(classes: int) -> torch.nn.Module:
    """The installed weights in timm's efficientnet_lite0: same tensors, PyTorch's padding and BatchNorm eps."""
    import timm

    net = timm.create_model("efficientnet_lite0", num_classes=1000)
    net.load_state_dict(imagenet_state_dict("efficientnet_lite0", timm.create_model("tf_efficientnet_lite0")))
    return EfficientNetLite("efficientnet_lite0", net)


def cell(right_total: tuple[int, int]) -> str:
    right, total = right_total
    low, high = wilson_interval(right, total)
    return f"{right / total:.1%} [{low:.1%}, {high:.1%}] ({right}/{total})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    found = find_samples(args.data)
    if not found.splits.get("test"):
        raise SystemExit(f"{args.data} has no test split: this probe reports validation and test")
    classes = len(found.classes)
    chosen = {"train": draw_training_subset(found.splits["train"], args.train_per_class),
              "val": found.splits["val"], "test": found.splits["test"]}
    lite, imagenet = input_normalization("efficientnet_lite0"), (IMAGENET_MEAN, IMAGENET_STD)
    configurations = [  # (label, image side, model factory, (mean, std))
        ("pretrained, as shipped (tf padding, [-1, 1])", 224,
         lambda: create_model("efficientnet_lite0", classes, pretrained=True), lite),
        ("random weights, [-1, 1]", 224, lambda: create_model("efficientnet_lite0", classes), lite),
        ("pretrained, ImageNet mean/std", 224,
         lambda: create_model("efficientnet_lite0", classes, pretrained=True), imagenet),
        ("pretrained, symmetric padding (timm efficientnet_lite0)", 224,
         lambda: symmetric_padding_model(classes), lite),
    ]
    decoded, rows = {}, []
    for label, side, build, (mean, std) in configurations:
        if side not in decoded:
            decoded[side] = {name: decode(samples, side, args.workers) for name, samples in chosen.items()}
            print(f"decoded {sum(len(l) for _, l in decoded[side].values())} images at {side} px "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        torch.manual_seed(0)  # the random initialisation, the same for every random row
        result = probe(build(), decoded[side], classes, mean, std)
        rows.append((label, side, result))
        print(f"{label} {side} px: val {cell(result['val'])}, test {cell(result['test'])} "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    write_results(args, found, decoded, rows, time.monotonic() - started)


def write_results(args, found, decoded: dict, rows: list, seconds: float) -> None:
    counts = {name: len(labels) for name, (_, labels) in decoded[224].items()}
    lines = [
        "# Linear probe: installed EfficientNet-Lite0 ImageNet weights against random weights",
        "",
        f"`.venv/bin/python benchmarks/pretrained_probe.py --data {args.data} --train-per-class {args.train_per_class}`"
        f" — {datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, cnnlab {cnnlab.__version__}; {seconds:.0f} s in all.",
        "",
        f"Data: {Path(found.root).name}, {len(found.classes)} classes; the linear head is trained on "
        f"{counts['train']} training images ({args.train_per_class} per class, seed 0) and evaluated on the whole "
        f"validation ({counts['val']}) and test ({counts['test']}) splits. Features: the 1280-d global average of "
        "`features(x)`, frozen; head: multinomial logistic regression (L-BFGS, L2 by 5-fold cross-validation on the "
        "training images). Accuracy with the 95% Wilson interval.",
        "",
        "| weights and input | image side | validation accuracy | test accuracy | L2 |",
        "|---|---:|---|---|---:|",
    ]
    lines += [f"| {label} | {side} | {cell(r['val'])} | {cell(r['test'])} | {r['l2']:g} |" for label, side, r in rows]
    chance = 1 / len(found.classes)
    lines += ["", f"Chance: {chance:.1%}. `pretrained, as shipped` is what `--model efficientnet_lite0 --pretrained` "
              "builds (cnnlab.models.efficientnet_lite); the run's preprocessing records its [-1, 1] "
              "normalisation.", ""]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
