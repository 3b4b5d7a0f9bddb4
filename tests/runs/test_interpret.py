"""Interpretation of a run: most-confused pairs and ECE on hand-made arrays with known answers (ECE also
against torchmetrics), top losses in order, and what `evaluate` writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from cnnlab.data.images import read_pil
from cnnlab.runs.interpret import ECE_BINS, calibration, most_confused, top_losses


# --- most confused ---------------------------------------------------------------------------------------------
def test_most_confused_orders_off_diagonal_cells_by_count():
    matrix = np.array([[5, 3, 0],
                       [1, 4, 2],
                       [0, 6, 2]])  # 12 errors; row sums 8, 7, 8
    pairs = most_confused(matrix, ["a", "b", "c"], top=3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("c", "b", 6), ("a", "b", 3), ("b", "c", 2)]
    assert pairs[0]["share_of_true"] == pytest.approx(6 / 8)
    assert pairs[0]["share_of_errors"] == pytest.approx(6 / 12)
    assert pairs[2]["share_of_true"] == pytest.approx(2 / 7)
    assert len(most_confused(matrix, ["a", "b", "c"], top=10)) == 4  # only non-zero cells


def test_most_confused_breaks_ties_in_class_order_and_is_empty_without_errors():
    matrix = np.array([[0, 2, 2], [2, 0, 0], [0, 0, 1]])
    pairs = most_confused(matrix, ["a", "b", "c"])
    assert [(p["true"], p["predicted"]) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "a")]
    assert most_confused(np.diag([3, 4]), ["x", "y"]) == []


# --- top losses ------------------------------------------------------------------------------------------------
def test_top_losses_are_the_largest_in_descending_order():
    losses = np.array([0.1, 2.0, 0.5, 2.0, 3.0])
    assert top_losses(losses, 3).tolist() == [4, 1, 3]  # the tie 1/3 in index order
    assert top_losses(losses, 10).tolist() == [4, 1, 3, 2, 0]
    assert top_losses(losses, 0).tolist() == []


# --- calibration -----------------------------------------------------------------------------------------------
HAND = np.array([[0.90, 0.10],   # label 0: right, confidence 0.90 -> bin 13 (0.8667, 0.9333]
                 [0.88, 0.12],   # label 0: right, confidence 0.88 -> bin 13
                 [0.85, 0.15],   # label 1: wrong, confidence 0.85 -> bin 12 (0.8, 0.8667]
                 [0.30, 0.70],   # label 1: right, confidence 0.70 -> bin 10 (0.6667, 0.7333]
                 [0.45, 0.55]])  # label 0: wrong, confidence 0.55 -> bin 8 (0.5333, 0.6]
HAND_LABELS = np.array([0, 0, 1, 1, 0])


def test_ece_by_hand():
    result = calibration(HAND, HAND_LABELS)
    # bin 13: 2 images, accuracy 1, confidence 0.89 -> |1 - 0.89| = 0.11, weight 2/5; the others one image each
    expected = (2 * 0.11 + abs(0 - 0.85) + abs(1 - 0.70) + abs(0 - 0.55)) / 5  # = 0.384
    assert result["ece"] == pytest.approx(expected) == pytest.approx(0.384)
    assert len(result["bins"]) == ECE_BINS
    assert result["bins"][13] == pytest.approx({"lower": 13 / 15, "upper": 14 / 15, "count": 2,
                                                 "confidence": 0.89, "accuracy": 1.0})
    assert result["bins"][0] == {"lower": 0.0, "upper": 1 / 15, "count": 0, "confidence": None, "accuracy": None}
    assert [b["count"] for b in result["bins"]] == [0] * 8 + [1, 0, 1, 0, 1, 2, 0]
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["mean_confidence"] == pytest.approx((0.9 + 0.88 + 0.85 + 0.7 + 0.55) / 5)


def test_ece_with_one_bin_is_the_gap_between_mean_confidence_and_accuracy():
    result = calibration(HAND, HAND_LABELS, bins=1)
    assert result["ece"] == pytest.approx(abs(3 / 5 - (0.9 + 0.88 + 0.85 + 0.7 + 0.55) / 5))


def test_perfectly_calibrated_and_certain_predictions_have_zero_ece():
    probabilities = np.eye(3)[[0, 1, 2, 0]]  # confidence exactly 1.0: the last bin, all right
    result = calibration(probabilities, np.array([0, 1, 2, 0]))
    assert result["ece"] == 0.0 and result["bins"][-1]["count"] == 4


@pytest.mark.parametrize("num_classes,n,seed", [(3, 200, 0), (10, 500, 1), (2, 64, 2)])
def test_ece_matches_torchmetrics(num_classes, n, seed):
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.softmax(3 * torch.randn(n, num_classes, generator=generator, dtype=torch.float64), 1)
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    reference = MulticlassCalibrationError(num_classes=num_classes, n_bins=ECE_BINS, norm="l1")
    # random confidences never sit exactly on a bin edge, where the two binning conventions differ
    assert calibration(probabilities.numpy(), labels.numpy())["ece"] == pytest.approx(
        reference(probabilities, labels).item(), abs=1e-6)


def test_calibration_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="probabilities"):
        calibration(np.ones((3, 2)) / 2, np.zeros(4, dtype=int))


# --- evaluate on a tiny run ------------------------------------------------------------------------------------
def test_evaluate_lists_the_highest_losses_in_descending_order(tiny_eval):
    result = tiny_eval
    n = len(result.labels)
    assert n == 12
    # per-image loss is -log p(true class); its mean is the reported loss
    expected = -np.log(result.probabilities[np.arange(n), result.labels])
    assert result.losses == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert result.losses.mean() == pytest.approx(result.loss, rel=1e-5)
    listed = [row["loss"] for row in result.top_losses]
    assert len(listed) == min(16, n)
    assert listed == sorted(listed, reverse=True)
    assert listed == pytest.approx(sorted(expected, reverse=True)[:len(listed)], rel=1e-4, abs=1e-6)
    first = result.top_losses[0]
    k = result.paths.index(first["path"])
    assert first["true"] == result.classes[result.labels[k]]
    assert first["predicted"] == result.classes[result.probabilities[k].argmax()]
    assert first["probability_true"] == pytest.approx(math.exp(-first["loss"]), rel=1e-4)


def test_evaluate_writes_interpretation_files_and_json(tiny_eval):
    run = tiny_eval.run_dir
    saved = json.loads((run / "eval_val.json").read_text())
    assert saved["files"] == {"confusion_matrix": "confusion_matrix_val.png", "top_losses": "top_losses_val.png",
                              "reliability": "reliability_val.png", "top_losses_gradcam": "top_losses_val_gradcam.png"}
    for name in saved["files"].values():
        with read_pil(run / name) as image:
            assert image.width > 200 and image.height > 200, name
    assert saved["most_confused"] == most_confused(tiny_eval.confusion, tiny_eval.classes)
    assert saved["calibration"]["ece"] == pytest.approx(calibration(tiny_eval.probabilities, tiny_eval.labels)["ece"])
    assert [row["path"] for row in saved["top_losses"]] == [row["path"] for row in tiny_eval.top_losses]
    normalised = np.array(saved["confusion_matrix_normalised"])
    assert normalised.shape == (3, 3) and normalised.sum(axis=1) == pytest.approx([1, 1, 1], abs=1e-3)
    assert "expected calibration error" in tiny_eval.describe()
    assert (run / "report.html").is_file()
