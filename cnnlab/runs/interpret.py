"""What a trained network gets wrong and how far to trust its probabilities: pure NumPy, no I/O.

Three questions after "what is the accuracy?":
  * Which classes does it mix up?      most_confused(confusion matrix)
  * Which images does it get most wrong? top_losses(per-image cross-entropy)
  * Does "90% sure" mean right 9 times in 10?  calibration(probabilities, labels): expected calibration
    error (ECE) and the bins of a reliability diagram.

Arrays: probabilities (N, K) softmax outputs, rows sum to 1; labels (N,) int class indices; matrix (K, K)
counts with rows = true class, columns = predicted class (as cnnlab.runs.evaluation.confusion_matrix).
"""

from __future__ import annotations

import numpy as np

# 15 equal-width bins: the number used by Guo et al. (2017, "On Calibration of Modern Neural Networks"),
# which made ECE the standard measure; fewer bins hide miscalibration, more leave bins nearly empty.
ECE_BINS = 15


def most_confused(matrix: np.ndarray, classes: list[str], top: int = 5) -> list[dict]:
    """The `top` largest off-diagonal cells: true, predicted, count, share_of_true, share_of_errors."""
    matrix = np.asarray(matrix)
    errors = matrix.sum() - np.trace(matrix)
    support = matrix.sum(axis=1)
    cells = [(int(matrix[t, p]), t, p) for t in range(len(classes)) for p in range(len(classes))
             if t != p and matrix[t, p] > 0]
    # largest count first; ties in class order, so the list is the same on every run
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [{"true": classes[t], "predicted": classes[p], "count": count,
             "share_of_true": count / int(support[t]),  # support > 0: the cell is in row t
             "share_of_errors": count / int(errors)} for count, t, p in cells[:top]]


def top_losses(losses: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest per-image losses, largest first (ties: lower index first)."""
    losses = np.asarray(losses, dtype=float)
    return np.argsort(-losses, kind="stable")[:max(0, n)]


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error and reliability bins of the top-1 confidence.

    Bin m holds the images whose confidence c = max_k p_k lies in ((m-1)/bins, m/bins] (the first bin also
    takes c = 0). ECE = sum over bins of (n_m / N) * |accuracy_m - mean confidence_m|: 0 for a network
    whose "90% sure" is right 90% of the time; the share of images it is over- or under-confident on, at most 1.
    Returns {"ece", "bins": [{lower, upper, count, confidence, accuracy}], "mean_confidence", "accuracy"};
    confidence and accuracy of an empty bin are None.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"calibration needs probabilities (N, K) and labels (N,) with N > 0, "
                         f"got {probabilities.shape} and {labels.shape}")
    confidence = probabilities.max(axis=1)                               # (N,)
    correct = (probabilities.argmax(axis=1) == labels).astype(float)     # (N,)
    # right-closed bins: ceil(c * bins) - 1, so c = m/bins falls in bin m-1 and c = 1.0 in the last bin
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    filled = count > 0
    mean_confidence = np.divide(confidence_sum, count, out=np.zeros(bins), where=filled)
    accuracy = np.divide(correct_sum, count, out=np.zeros(bins), where=filled)
    ece = float(np.sum(count / len(labels) * np.abs(accuracy - mean_confidence)))
    rows = [{"lower": m / bins, "upper": (m + 1) / bins, "count": int(count[m]),
             "confidence": float(mean_confidence[m]) if filled[m] else None,
             "accuracy": float(accuracy[m]) if filled[m] else None} for m in range(bins)]
    return {"ece": ece, "bins": rows, "mean_confidence": float(confidence.mean()), "accuracy": float(correct.mean())}
