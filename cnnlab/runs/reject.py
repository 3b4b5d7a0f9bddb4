"""None of these: the confidence under which a run answers `unknown` instead of a class.

Method: maximum softmax probability (Hendrycks & Gimpel, "A baseline for detecting misclassified and
out-of-distribution examples in neural networks", ICLR 2017). An image's confidence is its top class's probability;
an image is answered `unknown` (with its closest classes) when that confidence is under a threshold.

The threshold is chosen on the validation split's best-epoch probabilities, where the answers are known:

    risk-coverage curve   sort the images by confidence, most confident first; keeping those at or above each
                          confidence, the share kept (coverage) against the accuracy of the kept predictions
    target precision      TARGET_PRECISION, or the accuracy of the surest half of the images where that is lower
    threshold             the lowest confidence whose kept images reach the target: the most coverage that does

The same rule is applied to new images (cnnlab.commands.predict, cnnlab.serve): unknown when confidence < threshold.
Written at the end of training and by `cnnlab eval` on the validation split (reject.json, risk_coverage.png).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab import plots
from cnnlab.errors import CnnlabError
from cnnlab.runs.diagnosis import wilson_interval
from cnnlab.runs.reader import read_optional_json
from cnnlab.training.record import REJECT, RISK_COVERAGE, write_reject

METHOD = "maximum softmax probability (Hendrycks & Gimpel 2017)"
RULE = "unknown when the top class's probability is below the threshold"
# One wrong answer in twenty among those the run does give: a common operating point for "answer or abstain", and
# one that a run with a few hundred validation images can measure (its 95% interval is a few points wide).
TARGET_PRECISION = 0.95
# A weak run never reaches TARGET_PRECISION; it gets the precision its surest half of the validation images does
# reach, so that it still answers at least about half of the images it was trained for instead of almost none.
SUREST_SHARE = 0.5
# The curve stored in reject.json (and drawn) at this many points at most: enough for the figure, and a run with
# 50,000 validation images does not write a megabyte of JSON.
CURVE_POINTS = 200
REJECT_CHOICES = ("auto", "off", "a probability P in (0, 1]")


@dataclass
class RiskCoverage:
    """Keeping the images whose confidence is >= thresholds[i]: the share kept and the accuracy of those kept.
    One point per distinct confidence (images of equal confidence are kept or rejected together), surest first."""

    thresholds: np.ndarray  # (M,) float, descending
    coverage: np.ndarray  # (M,) share of the images kept, ascending, the last is 1
    accuracy: np.ndarray  # (M,) accuracy of the kept predictions
    kept: np.ndarray  # (M,) int, images kept
    correct: np.ndarray  # (M,) int, of those, predicted right


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    """The curve of `confidence` (N,) top-1 probabilities and `correct` (N,) bool (top-1 right)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if confidence.ndim != 1 or confidence.shape != correct.shape or len(confidence) == 0:
        raise ValueError(f"risk_coverage needs two (N,) arrays with N > 0, got {confidence.shape}, {correct.shape}")
    order = np.argsort(-confidence, kind="stable")
    sorted_confidence = confidence[order]
    hits = np.cumsum(correct[order])  # (N,) right among the k+1 surest
    kept = np.arange(1, len(confidence) + 1)
    last_of_tie = np.append(sorted_confidence[1:] != sorted_confidence[:-1], True)  # (N,) bool
    return RiskCoverage(sorted_confidence[last_of_tie], kept[last_of_tie] / len(confidence),
                        hits[last_of_tie] / kept[last_of_tie], kept[last_of_tie], hits[last_of_tie])


def default_target(curve: RiskCoverage) -> float:
    """TARGET_PRECISION, or the accuracy of the surest SUREST_SHARE of the images where that is lower."""
    surest = int(np.searchsorted(curve.coverage, SUREST_SHARE))  # first point keeping at least that share
    return float(min(TARGET_PRECISION, curve.accuracy[surest]))


def choose_point(curve: RiskCoverage, target: float) -> int | None:
    """The index of the lowest threshold whose kept predictions reach `target` accuracy; None if none does."""
    reaching = np.flatnonzero(curve.accuracy >= target)
    return int(reaching[-1]) if len(reaching) else None


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target: float | None = None) -> dict:
    """The threshold for `probabilities` (N, K) of images with true `labels` (N,), as reject.json records it;
    `target` None: default_target."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    confidence = probabilities.max(axis=1)
    curve = risk_coverage(confidence, probabilities.argmax(axis=1) == labels)
    target = default_target(curve) if target is None else float(target)
    point = choose_point(curve, target)
    if point is None:
        raise CnnlabError(f"no threshold reaches an accuracy of {target:g} on these {len(labels)} images (the "
                          f"surest one reaches {curve.accuracy[0]:g}); choose a lower target")
    kept, right = int(curve.kept[point]), int(curve.correct[point])
    low, high = wilson_interval(right, kept)
    shown = np.unique(np.append(np.linspace(0, len(curve.thresholds) - 1, CURVE_POINTS).round().astype(int), point))
    return {"method": METHOD, "rule": RULE, "threshold": float(curve.thresholds[point]),
            "target_precision": target,
            "target_reason": f"{TARGET_PRECISION:g}, or the accuracy of the surest {SUREST_SHARE:.0%} of the "
                             "validation images where that is lower",
            "images": int(len(labels)), "kept": kept, "coverage": float(curve.coverage[point]),
            "accuracy": float(curve.accuracy[point]), "accuracy_interval95": [low, high],
            "accuracy_all": float(curve.accuracy[-1]),
            "curve": {"threshold": curve.thresholds[shown].tolist(), "coverage": curve.coverage[shown].tolist(),
                      "accuracy": curve.accuracy[shown].tolist()}}


def write_threshold(run_dir: str | os.PathLike, probabilities: np.ndarray, labels: np.ndarray, split: str,
                    weights: str, title: str = "") -> dict:
    """Choose the threshold on a split's probabilities (N, K) and labels (N,); writes reject.json and
    risk_coverage.png into the run folder and returns what reject.json holds."""
    run_dir = Path(run_dir)
    chosen = choose_threshold(probabilities, labels) | {"split": split, "weights": weights,
                                                        "figure": RISK_COVERAGE}
    curve = chosen["curve"]
    plots.risk_coverage(curve["coverage"], curve["accuracy"], chosen["coverage"], chosen["accuracy"],
                        chosen["threshold"], chosen["target_precision"], run_dir / RISK_COVERAGE, title=title)
    write_reject(run_dir, chosen)
    return chosen


def read_threshold(run_dir: str | os.PathLike) -> dict | None:
    """reject.json of a run folder (or of the folder an exported file lies in); None when there is none."""
    chosen = read_optional_json(Path(run_dir) / REJECT)
    return chosen if isinstance(chosen, dict) and isinstance(chosen.get("threshold"), (int, float)) else None


def resolve_threshold(reject: str | float, run_dir: str | os.PathLike) -> float | None:
    """The threshold `--reject` asks for: auto (the run's reject.json; None without one), off (None) or P."""
    text = str(reject).strip().lower()
    if text == "off":
        return None
    if text == "auto":
        chosen = read_threshold(run_dir)
        return None if chosen is None else float(chosen["threshold"])
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise CnnlabError(f"--reject {reject!r}: choose {', '.join(REJECT_CHOICES)} (an image whose top probability "
                          "is below P is answered unknown)")
    return value


def is_unknown(top_probability: float, threshold: float | None) -> bool:
    """The rule: unknown when the top probability is below the threshold (never without one)."""
    return threshold is not None and top_probability < threshold
