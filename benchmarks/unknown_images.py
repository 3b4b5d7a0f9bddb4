"""How well the `unknown` threshold separates images of classes a run never saw (not a test): the numbers in
docs/trust.md's "None of these".

    PYTHONPATH=$PWD .venv/bin/python benchmarks/unknown_images.py [--per-class 80] [--epochs 10] [--model simple_cnn]

A run is trained on the built-in shapes kind with three classes (circle, square, triangle), 64 px images at 48 px.
Its threshold (reject.json, chosen on its validation split) is then applied by `predict` to three groups of images
it was not trained on, each written with another seed:

    known     new images of its own three classes: the share answered unknown is the cost of the threshold
    unseen    shapes of the same kind it never saw (star, cross, ring): "near" out-of-distribution
    objects   the objects kind (many small shapes on clutter, 512 px): a different kind of picture, "far"

For each group: the share answered unknown, and the AUROC of the top probability between known and that group
(0.5: the confidence does not tell them apart; 1: it does perfectly; Mann-Whitney, ties counted half).
Results go to benchmarks/results/unknown_images_<model>.md.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import numpy as np

from cnnlab.commands.predict import predict
from cnnlab.commands.train import fit
from cnnlab.data.synth import synthesize
from cnnlab.runs.reject import read_threshold

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
UNSEEN = ("star", "cross", "ring")


def auroc(known: np.ndarray, other: np.ndarray) -> float:
    """P(a known image is more confident than an other one), ties counted half."""
    greater = (known[:, None] > other[None, :]).mean()
    ties = (known[:, None] == other[None, :]).mean()
    return float(greater + 0.5 * ties)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=80, help="training + validation images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--test-per-class", type=int, default=40, help="images per class of each measured group")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        synthesize(root / "train", classes=3, per_class=args.per_class, size=64, seed=0, val_fraction=0.25)
        synthesize(root / "known", classes=3, per_class=args.test_per_class, size=64, seed=11, val_fraction=0.5)
        synthesize(root / "six", classes=6, per_class=args.test_per_class, size=64, seed=12, val_fraction=0.5)
        synthesize(root / "objects", classes=3, per_class=args.test_per_class, size=512, seed=13, val_fraction=0.5,
                   kind="objects")
        run = fit(data=str(root / "train"), img_size=48, epochs=args.epochs, batch_size=32, workers=0,
                  out=str(root / "run"), model=args.model, cache="off", precision="fp32", verbose=False)
        chosen = read_threshold(run.run_dir)
        groups = {"known": sorted((root / "known").rglob("*.jpg")),
                  "unseen": [p for name in UNSEEN for p in sorted((root / "six").rglob(f"{name}_*.jpg"))],
                  "objects": sorted((root / "objects").rglob("*.jpg"))}
        measured = {}
        for name, paths in groups.items():
            rows = predict(run.run_dir, paths, top_k=1, workers=0)
            top = np.array([row["top"][0]["probability"] for row in rows])
            right = [row["top"][0]["class"] == Path(row["path"]).parent.name for row in rows]
            measured[name] = {"images": len(rows), "unknown": float(np.mean([row["unknown"] for row in rows])),
                              "confidence": top, "right": np.array(right)}
    seconds = time.perf_counter() - started
    known = measured["known"]
    answered = ~np.array([c < chosen["threshold"] for c in known["confidence"]])
    lines = [f"# The unknown threshold on images of classes the run never saw ({datetime.date.today()})", "",
             f"`PYTHONPATH=$PWD .venv/bin/python benchmarks/unknown_images.py --per-class {args.per_class} "
             f"--epochs {args.epochs} --model {args.model} --test-per-class {args.test_per_class}` ({seconds:.0f} s)", "",
             f"Run: {args.model}, {args.epochs} epochs on 3 shapes classes ({args.per_class} images each, 64 px at 48 px); "
             f"best validation accuracy {run.best_val_acc:.3f}.", "",
             f"Threshold (reject.json): {chosen['threshold']:.4f}, target precision {chosen['target_precision']:.3f}; "
             f"on validation {chosen['coverage']:.1%} answered, {chosen['accuracy']:.1%} of them right "
             f"(95% interval {chosen['accuracy_interval95'][0]:.1%} to {chosen['accuracy_interval95'][1]:.1%}).", "",
             "| group | images | answered unknown | mean top probability | AUROC known vs group |",
             "|---|---:|---:|---:|---:|"]
    for name, m in measured.items():
        separation = "" if name == "known" else f"{auroc(known['confidence'], m['confidence']):.3f}"
        lines.append(f"| {name} | {m['images']} | {m['unknown']:.1%} | {m['confidence'].mean():.3f} | {separation} |")
    lines += ["", f"Known images: accuracy {known['right'].mean():.1%} over all, "
                  f"{known['right'][answered].mean() if answered.any() else float('nan'):.1%} over the "
                  f"{int(answered.sum())} answered.", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"unknown_images_{args.model}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
