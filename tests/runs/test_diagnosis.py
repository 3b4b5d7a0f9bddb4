"""diagnose: synthetic learning curves for every verdict, the Wilson interval, and noise that must not fool it."""

import json
import math
import random

import pytest

from cnnlab.runs import diagnosis as dg
from cnnlab.runs.diagnosis import (DIVERGING, GOOD_FIT, NO_BETTER, OVERFITTING, PLATEAU, STILL_IMPROVING, TOO_FEW_VAL,
                                   TOO_SHORT, UNDERFITTING, Diagnosis, Verdict, diagnose, wilson_interval)


# --- curve generators -----------------------------------------------------------------------------------------
def decay(n, start, end, rate=0.35):
    """Exponential approach from start (epoch 1) to end: start, ..., ~end."""
    return [end + (start - end) * math.exp(-rate * e) for e in range(n)]


def rise(n, start, end, rate=0.35):
    """Exponential approach upwards (accuracy curves)."""
    return [end - (end - start) * math.exp(-rate * e) for e in range(n)]


def history(train_loss, val_loss, train_acc, val_acc, lr=1e-3):
    """One dict per epoch, as cnnlab writes it; None in a column drops that key."""
    rows = []
    for i, values in enumerate(zip(train_loss, val_loss, train_acc, val_acc)):
        row = {"epoch": i + 1, "lr": lr if not callable(lr) else lr(i), "seconds": 1.5}
        for key, value in zip(("train_loss", "val_loss", "train_acc", "val_acc"), values):
            if value is not None:
                row[key] = value
        rows.append(row)
    return rows


def good_run(n=20, noise=0.0, seed=0):
    """Both losses fall and level off together; accuracy high and close. noise: relative jitter on val."""
    rng = random.Random(seed)
    jitter = lambda: 1 + rng.uniform(-noise, noise)  # noqa: E731
    return history(decay(n, 2.0, 0.15), [v * jitter() for v in decay(n, 2.0, 0.2)],
                   rise(n, 0.3, 0.95), [min(1.0, a + rng.uniform(-noise, noise) / 4) for a in rise(n, 0.3, 0.93)],
                   lr=lambda i: 1e-3 * (1 - i / n))


def u_shaped_run():
    """Val loss lowest at epoch 6 (0.412), up to 0.655 by epoch 15; train loss falls 0.30 -> 0.05 meanwhile."""
    n = 15
    val_loss = [0.412 + 0.15 * (6 - e) if e < 6 else 0.412 + 0.027 * (e - 6) for e in range(1, n + 1)]
    train_loss = [1.2 - 0.18 * (e - 1) for e in range(1, 6)] + [0.30 * (0.05 / 0.30) ** ((e - 6) / 9)
                                                                  for e in range(6, n + 1)]
    train_acc = rise(n, 0.5, 0.99, rate=0.6)
    val_acc = [min(0.81, 0.5 + 0.06 * e) if e <= 6 else 0.81 - 0.05 * (e - 6) / 9 for e in range(1, n + 1)]
    return history(train_loss, val_loss, train_acc, val_acc)


def underfit_run():
    """Train accuracy only ~60% and still climbing; losses still falling when training stopped."""
    n = 10
    return history(decay(n, 2.3, 0.5, rate=0.08), decay(n, 2.3, 0.55, rate=0.08),
                   rise(n, 0.2, 0.9, rate=0.08), rise(n, 0.2, 0.88, rate=0.08))


def chance_run(n=10, num_classes=10):
    """Flat at chance: the network learns nothing (loss ln(C), accuracy 1/C)."""
    chance = math.log(num_classes)
    return history([chance * (1.0 - 0.002 * (e % 2)) for e in range(n)], [chance] * n,
                   [1 / num_classes] * n, [1 / num_classes] * n)


def plateau_run():
    """Improves for 5 epochs, then val loss and val accuracy stay flat for 10 epochs at a mediocre level."""
    n = 15
    val_loss = [1.2 - 0.12 * e for e in range(5)] + [0.72 + 0.002 * (e % 2) for e in range(n - 5)]
    train_loss = decay(n, 1.2, 0.45, rate=0.4)
    val_acc = [0.5 + 0.05 * e for e in range(5)] + [0.70] * (n - 5)
    train_acc = rise(n, 0.5, 0.76, rate=0.4)
    return history(train_loss, val_loss, train_acc, val_acc, lr=3e-4)


def nan_run():
    """Loss turns NaN at epoch 3."""
    return history([2.3, 1.9, float("nan"), float("nan")], [2.2, 1.8, float("nan"), float("nan")],
                   [0.2, 0.3, 0.1, 0.1], [0.2, 0.3, 0.1, 0.1], lr=0.5)


# --- one verdict per curve shape -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, kwargs, expected", [
    (good_run, {"val_size": 2000, "num_classes": 10}, GOOD_FIT),
    (u_shaped_run, {"val_size": 2000}, OVERFITTING),
    (underfit_run, {}, UNDERFITTING),
    (chance_run, {"num_classes": 10}, UNDERFITTING),
    (plateau_run, {"num_classes": 5}, PLATEAU),
    (nan_run, {}, DIVERGING),
    (good_run, {"val_size": 20}, TOO_FEW_VAL),
], ids=["good", "u-shaped", "underfit", "chance", "plateau", "nan", "tiny-val"])
def test_each_curve_shape_gets_exactly_its_verdict(make, kwargs, expected):
    result = diagnose(make(), **kwargs)
    assert result.verdict == expected, result.describe()
    assert isinstance(result.verdict, Verdict)
    assert result.headline and result.evidence and result.advice


def test_overfitting_reports_best_epoch_and_the_numbers():
    result = diagnose(u_shaped_run())
    assert result.verdict == OVERFITTING
    assert result.best_epoch == 6
    assert ("validation loss was lowest at epoch 6 (0.412) and rose to 0.655 by epoch 15 "
            "while training loss kept falling from 0.3 to 0.05") in result.evidence
    gap_line = next(e for e in result.evidence if e.startswith("final train-val accuracy gap"))
    assert gap_line == "final train-val accuracy gap: 23.0 points (train 99.0%, val 76.0% at epoch 15)"
    text = " ".join(result.advice)
    for remedy in ("epoch 6 (best.safetensors)", "dropout", "augment", "more training images", "patience"):
        assert remedy in text


def test_an_accuracy_gap_alone_is_evidence_not_overfitting():
    # Val loss keeps falling while training accuracy runs 20 points ahead: the network still gets better on new
    # images, so it is still improving (until issue 20 the gap alone was called overfitting).
    n = 12
    result = diagnose(history(decay(n, 1.5, 0.02), decay(n, 1.5, 0.8), rise(n, 0.5, 1.0), rise(n, 0.5, 0.8)),
                      augment="default", dropout=0.2)
    assert result.verdict == STILL_IMPROVING
    assert "final train-val accuracy gap: 19.6 points (train 98.9%, val 79.4% at epoch 12)" in result.evidence
    assert result.evidence[1] == ("validation loss still falling: it fell 3.2% over epochs 9-12 "
                                  "(fitted line 0.841 to 0.813)")
    assert result.advice[0] == "Train for more epochs (e.g. --epochs 24)."
    assert "watch whether validation loss turns up" in result.advice[1]
    assert result.advice[2] == ("Raise dropout (--dropout 0.5; this run had 0.2) so the network cannot memorise "
                                "single images.")
    assert not any("--augment" in a for a in result.advice)  # augmentation was on


def test_small_val_loss_rise_is_not_overfitting():
    # Val loss ends 5% above its minimum (below OVERFIT_RISE) while train loss falls: a good fit with jitter.
    rows = good_run()
    best = min(r["val_loss"] for r in rows)
    rows[-1]["val_loss"] = rows[-2]["val_loss"] = best * 1.05
    rows[-3]["val_loss"] = best * 0.999
    rows[-1]["train_loss"] = rows[-3]["train_loss"] * 0.9  # train loss keeps falling (TRAIN_FALL)
    assert diagnose(rows).verdict == GOOD_FIT
    rows[-1]["val_loss"] = rows[-2]["val_loss"] = best * 1.15  # now a sustained 15% rise
    assert diagnose(rows).verdict == OVERFITTING


def test_one_bad_final_epoch_is_not_overfitting():
    rows = good_run()
    rows[-1]["val_loss"] *= 1.5  # a single spike; the epoch before is at the minimum
    assert diagnose(rows).verdict == GOOD_FIT


def test_val_rise_without_falling_train_loss_is_not_overfitting():
    rows = u_shaped_run()
    for row in rows[6:]:
        row["train_loss"] = rows[5]["train_loss"]  # train loss flat after the best epoch: stalled, not memorising
        row["train_acc"] = row["val_acc"] + 0.05
    assert diagnose(rows).verdict != OVERFITTING


@pytest.mark.parametrize("seed", range(20))
def test_realistic_noisy_good_run_is_not_overfitting(seed):
    result = diagnose(good_run(n=25, noise=0.04, seed=seed), val_size=1500, num_classes=4)
    assert result.verdict == GOOD_FIT, result.describe()


def test_training_harder_than_validation_is_still_a_good_fit():
    # Dropout and augmentation act only in training, so train accuracy below val accuracy is normal.
    n = 15
    rows = history(decay(n, 2.0, 0.5), decay(n, 2.0, 0.3), rise(n, 0.3, 0.82), rise(n, 0.3, 0.9))
    assert diagnose(rows, val_size=500, num_classes=3).verdict == GOOD_FIT


def test_nan_accuracy_is_a_gap_not_a_crash():
    rows = good_run()
    rows[-1]["val_acc"] = float("nan")
    result = diagnose(rows, val_size=2000)
    assert result.verdict == GOOD_FIT
    assert "nan" not in result.describe()


def test_good_fit_evidence_and_advice():
    rows = good_run()
    rows[-1]["val_acc"] = 0.93
    result = diagnose(rows, val_size=2000)
    assert result.best_epoch == 20
    assert result.evidence[0].startswith("final train-val accuracy gap: 1.9 points (train 94.9%, val 93.0%")
    assert result.evidence[1] == "validation loss was lowest at the last epoch (0.202 at epoch 20)"
    assert any(e.startswith("validation accuracy 93.0% at epoch 20 on 2000 images: 95% interval 91.8%-94.0%")
               for e in result.evidence)
    assert "Keep the weights from epoch 20 (best.safetensors)." in result.advice


# --- diverging -------------------------------------------------------------------------------------------------------
def test_nan_is_reported_with_its_epoch_and_learning_rate():
    result = diagnose(nan_run())
    assert result.evidence[:2] == ["training loss became NaN at epoch 3", "learning rate at epoch 3: 0.5"]
    assert "Lower the learning rate" in result.advice[0]


def test_infinite_validation_loss_is_diverging():
    rows = good_run()
    rows[10]["val_loss"] = float("inf")
    result = diagnose(rows)
    assert result.verdict == DIVERGING
    assert result.evidence[0] == "validation loss became infinite at epoch 11"


def test_training_loss_rising_from_the_start_is_diverging():
    rows = history([2.3, 2.4, 2.9, 3.6, 4.8], [2.3, 2.5, 3.0, 3.9, 5.0], [0.1] * 5, [0.1] * 5)
    result = diagnose(rows, num_classes=10)
    assert result.verdict == DIVERGING
    assert result.evidence[0] == "training loss rose from 2.3 at epoch 1 to 2.9 at epoch 3 instead of falling"


def test_training_loss_blowing_back_up_is_diverging():
    rows = history([2.3, 1.0, 0.5, 0.4, 1.8, 1.9], [2.3, 1.1, 0.6, 0.5, 1.9, 2.0], [0.2, 0.6, 0.8, 0.85, 0.4, 0.4],
                   [0.2, 0.6, 0.8, 0.85, 0.4, 0.4])
    result = diagnose(rows)
    assert result.verdict == DIVERGING
    assert result.evidence[0] == "training loss jumped from 0.4 at epoch 4 to 1.8 at epoch 5"


def test_noise_on_a_tiny_loss_is_not_diverging():
    # Fine-tuning: the loss starts small, so +25% is noise, not a blow-up (DIVERGE_MIN_LOSS).
    rows = history([0.04, 0.05, 0.03, 0.035, 0.03, 0.03], [0.06, 0.06, 0.05, 0.05, 0.05, 0.05], [0.99] * 6,
                   [0.985] * 6)
    assert diagnose(rows).verdict == GOOD_FIT


def test_diverging_comes_before_too_few_val():
    assert diagnose(nan_run(), val_size=5).verdict == DIVERGING


# --- what a new user ran into (issue 10): verdicts must not contradict the numbers ------------------------------------
def test_few_validation_images_come_before_a_rising_loss():
    """(a) 20 train / 4 val images at batch 64 (one step an epoch): the loss wobbles up, the last epoch has the
    lowest training loss; with 4 validation images the only honest verdict is too few validation images."""
    onecycle = lambda i: 3e-3 * [0.1, 1.0, 0.9, 0.6, 0.3, 0.05][i]  # noqa: E731
    rows = history([1.10, 1.26, 1.31, 1.12, 1.05, 0.98], [1.1, 1.2, 1.25, 1.2, 1.15, 1.1],
                   [0.3, 0.3, 0.25, 0.35, 0.4, 0.45], [0.25, 0.25, 0.25, 0.5, 0.5, 0.5], lr=onecycle)
    result = diagnose(rows, val_size=4, num_classes=2)
    assert result.verdict == TOO_FEW_VAL
    assert not any("learning rate" in e for e in result.evidence)
    # and without the tiny val set, a run whose last epoch is its best is not "diverging" either
    assert diagnose(rows, num_classes=2).verdict != DIVERGING


def test_two_epochs_are_too_short_whatever_the_loss_did():
    """(b) compare --epochs 2: the MLP's loss went up at a decayed learning rate; too short, not diverging."""
    onecycle = lambda i: [2e-3, 3.42e-5][i]  # noqa: E731
    rows = history([2.1, 2.6], [2.2, 2.7], [0.2, 0.15], [0.18, 0.14], lr=onecycle)
    result = diagnose(rows, val_size=2000, num_classes=6)
    assert result.verdict == TOO_SHORT and result.verdict.label == "Too short to tell"
    assert not any("learning rate" in e for e in result.evidence)


def test_a_divergence_blames_the_learning_rate_only_when_it_was_high():
    decayed = history([2.3, 1.0, 0.5, 0.4, 1.8, 1.9], [2.3, 1.1, 0.6, 0.5, 1.9, 2.0],
                      [0.2, 0.6, 0.8, 0.85, 0.4, 0.4], [0.2, 0.6, 0.8, 0.85, 0.4, 0.4],
                      lr=lambda i: [1e-3, 1e-3, 5e-4, 1e-4, 2e-5, 1e-5][i])
    result = diagnose(decayed)
    assert result.verdict == DIVERGING
    assert "not because of a high learning rate" in result.headline
    assert result.evidence == ["training loss jumped from 0.4 at epoch 4 to 1.8 at epoch 5"]
    high = diagnose(history([2.3, 1.0, 0.5, 0.4, 1.8, 1.9], [2.3, 1.1, 0.6, 0.5, 1.9, 2.0],
                            [0.2, 0.6, 0.8, 0.85, 0.4, 0.4], [0.2, 0.6, 0.8, 0.85, 0.4, 0.4], lr=0.5))
    assert high.headline == "Training diverged: the learning rate is probably too high."
    assert high.evidence[1] == "learning rate at epoch 5: 0.5"


def test_diagnose_run_reproduces_the_runs_own_verdict(tiny_run):
    """(c) the README's call gives what the run folder says (12 val images: too few val), where the bare
    history without the run's val size would not."""
    from cnnlab.runs.reader import diagnose_run

    written = json.loads((tiny_run.run_dir / "diagnosis.json").read_text())
    assert diagnose_run(tiny_run.run_dir).to_dict() | {"inputs": written["inputs"]} == written
    assert written["verdict"] == "too_few_val"


# --- what a user ran into (issue 20): a verdict must match its evidence ---------------------------------------------
# 2 classes, 245 training images, 153 validation images (83 of class b): the run was called overfitting after 3
# epochs with validation loss lowest at its last epoch (train accuracy 11 points ahead), and after resuming to 5
# epochs "underfitting ... still improving" (a one-image new best of validation accuracy after epoch 2) while
# training loss rose from 0.652 at epoch 2 to 0.659 at epoch 5; its 56.9% is no better than answering b always.
ISSUE20_COUNTS = {"a": 70, "b": 83}
ISSUE20_SETUP = {"augment": "default", "dropout": 0.2, "pretrained": False, "weights": None, "img_size": 128,
                 "patience": None}


def issue20_run(n=5):
    """The first n epochs of the issue's run (val accuracies are whole images of 153)."""
    return history([0.690, 0.652, 0.660, 0.655, 0.659][:n], [0.820, 0.800, 0.795, 0.797, 0.790][:n],
                   [0.52, 0.63, 0.66, 0.64, 0.65][:n], [k / 153 for k in (83, 85, 84, 86, 87)][:n])


def test_three_epochs_with_val_loss_lowest_at_the_last_are_not_overfitting():
    rows = issue20_run(3)
    assert rows[2]["train_acc"] - rows[2]["val_acc"] >= dg.OVERFIT_GAP  # the gap that used to decide it
    result = diagnose(rows, num_classes=2)
    assert result.best_epoch == 3 and result.verdict != OVERFITTING
    assert result.verdict == UNDERFITTING  # 66% on its own training images, training loss still falling
    assert result.evidence == ["training accuracy only 66.0% at epoch 3",
                               "training loss still falling: it fell 4.3% over epochs 1-3 (fitted line 0.69 to 0.66)"]


def test_five_epochs_with_training_loss_rising_are_not_still_improving():
    rows = issue20_run(5)
    assert rows[4]["val_acc"] == max(r["val_acc"] for r in rows)  # a new best by one image at the last epoch
    result = diagnose(rows, num_classes=2)
    assert result.verdict == PLATEAU, result.describe()
    assert result.headline.startswith("Training has levelled off: over the last 4 epochs")
    assert result.evidence[1:4] == ["validation loss fell 1.1% over epochs 2-5 (fitted line 0.799 to 0.791)",
                                    "training loss rose 0.9% over epochs 2-5 (fitted line 0.653 to 0.658)",
                                    "validation accuracy rose 1.6 points over epochs 2-5 (fitted line 55.2% to 56.8%)"]
    assert not any("still" in line for line in result.evidence + [result.headline])


@pytest.mark.parametrize("epochs", [3, 5])
def test_no_better_than_the_majority_class_comes_first(epochs):
    result = diagnose(issue20_run(epochs), val_size=153, num_classes=2, val_counts=ISSUE20_COUNTS, **ISSUE20_SETUP)
    assert result.verdict == NO_BETTER, result.describe()
    if epochs == 5:
        assert result.val_acc_interval == pytest.approx(wilson_interval(87, 153))
        assert result.headline == ("No better than chance: the best validation accuracy, 56.9%, cannot be told apart "
                                   "from the 54.2% of always answering the largest class, 'b'; the network has "
                                   "learned (almost) nothing that carries over to new images.")
        assert result.evidence[:2] == [
            "validation accuracy 56.9% at epoch 5 on 153 images: 95% interval 48.9%-64.4% (15.5 points wide)",
            "always answering the largest class, 'b' (83 of 153 validation images) scores 54.2%: inside that "
            "interval, so the network is no better"]
    advice = " ".join(result.advice)
    assert "--pretrained" in result.advice[0] and "--weights FILE" in result.advice[0]
    assert "--model efficientnet_lite0 --pretrained" in result.advice[0]  # the offline weights: works without network
    assert "more training images" in result.advice[1]
    assert "--epochs 10" in advice and "--img-size 64; this run had 128" in advice
    assert "--augment" not in advice and "--dropout" not in advice  # on already, and no cure for learning nothing


def test_no_better_than_chance_takes_precedence_over_overfitting_and_its_advice_fits():
    rows = u_shaped_run()  # memorises the training images (99%) ...
    for row in rows:
        row["val_acc"] = 0.52  # ... and gets 104 of 200 balanced validation images right
    assert diagnose(rows, val_size=200).verdict == OVERFITTING  # the curves alone
    result = diagnose(rows, val_size=200, val_counts={"a": 100, "b": 100}, augment="none", dropout=0.5,
                      pretrained=False, img_size=64)
    assert result.verdict == NO_BETTER
    assert result.evidence[1] == ("guessing (1 in 2 for 2 equally large classes) scores 50.0%: inside that interval, "
                                  "so the network is no better")
    assert "training accuracy 99.0% at epoch 15: it fits its training images" in result.evidence[2]
    assert result.advice[2] == ("Turn data augmentation on (--augment default; this run had --augment none) so "
                                "each epoch sees new variants of every image.")
    advice = " ".join(result.advice)
    assert "--epochs" not in advice  # more epochs do not help a network that already fits its training images
    assert "--img-size" not in advice and "--dropout" not in advice  # 64 px and dropout 0.5 already
    started = diagnose(rows, val_size=200, val_counts={"a": 100, "b": 100}, pretrained=True)
    assert started.verdict == NO_BETTER and not any("--pretrained" in a for a in started.advice)


def test_no_better_than_chance_without_class_counts_uses_one_in_k():
    result = diagnose(chance_run(), val_size=1000, num_classes=10)
    assert result.verdict == NO_BETTER
    assert result.evidence[1] == ("guessing (1 in 10 classes) scores 10.0%: inside that interval, so the network is "
                                  "no better")
    assert "near chance level ln(10) = 2.3" in result.evidence[2]
    assert "labels match the images" in result.advice[-1]


def test_unbalanced_classes_compare_with_the_largest():
    rows = good_run()  # 93% validation accuracy: good on balanced classes
    counts = {"common": 930, "rare": 70}
    result = diagnose(rows, val_size=1000, val_counts=counts)
    assert result.verdict == NO_BETTER  # always answering "common" scores as much
    assert "the classes are unbalanced" in result.evidence[2]
    for row in rows:
        row["val_acc"] = min(row["val_acc"], 0.85)
    below = diagnose(rows, val_size=1000, val_counts=counts)
    assert below.headline.startswith("No better than chance: the best validation accuracy, 85.0%, is below the 93.0%")
    assert below.evidence[1].endswith("above that interval, so the network does worse than that")
    assert diagnose(good_run(), val_size=1000, val_counts={"a": 500, "b": 500}).verdict == GOOD_FIT


def test_clearly_above_the_majority_class_is_judged_by_its_curves():
    rows = issue20_run(5)
    rows[-1]["val_acc"] = 101 / 153  # 66.0%: the interval's lower end, 58.2%, is above 54.2%
    low, _ = wilson_interval(101, 153)
    assert low > 83 / 153
    result = diagnose(rows, val_size=153, num_classes=2, val_counts=ISSUE20_COUNTS)
    assert result.verdict == STILL_IMPROVING  # validation accuracy rose 9 points over the last 4 epochs
    assert result.evidence[1].startswith("validation accuracy still rising: it rose ")


def test_one_lucky_epoch_is_not_a_trend_but_a_steady_fall_through_noise_is():
    # Val loss flat at 0.8, then one epoch 2.5% lower: a new best (beyond LOSS_MIN_DELTA), not yet a trend.
    n = 10
    train = [1.0 - 0.02 * e for e in range(n - 4)] + [0.9] * 4
    flat = history(train, [0.8] * (n - 1) + [0.78], [0.85] * n, [0.7] * n)
    assert diagnose(flat).verdict == PLATEAU
    # Val loss falling 2% an epoch with +-1.5% noise, the last epoch up: still improving.
    wobble = [1.0, 0.99, 1.015, 0.985, 1.012]
    falling = [0.9 * 0.98 ** e * (wobble[e % 5] if e >= n - 5 else 1) for e in range(n)]
    falling[-1] = falling[-2] * 1.01
    result = diagnose(history(train, falling, [0.85] * n, [0.7] * n))
    assert result.verdict == STILL_IMPROVING, result.describe()
    assert "validation loss still falling" in result.evidence[1]


def test_diagnose_run_rederives_the_verdict_from_the_run_folder(tiny_run, tmp_path):
    """The issue's run as a run folder: the validation counts come from diagnosis.json's inputs, or, for a
    diagnosis.json written before they were recorded, from dataset.json; the options from config.yaml."""
    import csv
    import shutil

    from cnnlab.runs.reader import diagnose_run, diagnosis_inputs, read_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    rows = issue20_run(5)
    with open(run / "metrics.csv", newline="") as handle:
        columns = next(csv.reader(handle))
    with open(run / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k in columns} for row in rows)
    classes = json.loads((run / "classes.json").read_text())
    counts = dict(zip(classes, (70, 83, 0)))
    dataset = json.loads((run / "dataset.json").read_text())
    dataset["counts"]["val"] = counts
    (run / "dataset.json").write_text(json.dumps(dataset))
    (run / "diagnosis.json").write_text(json.dumps({"inputs": {"val_size": 153, "num_classes": 3,
                                                               "time_budget": None}}))  # before issue 20
    old = diagnose_run(run)
    assert old.verdict == NO_BETTER
    assert old.evidence[1].startswith(f"always answering the largest class, {classes[1]!r} (83 of 153 validation "
                                      "images) scores 54.2%")
    assert "--pretrained" in old.advice[0]  # config.yaml: trained from scratch
    assert not any("--img-size" in a for a in old.advice)  # config.yaml: 32 px already
    inputs = diagnosis_inputs(read_run(run).config, counts, 3)  # what finish() records now
    (run / "diagnosis.json").write_text(json.dumps({"inputs": inputs}))
    assert diagnose_run(run) == diagnose(rows, **inputs) == old


# --- advice names CLI flags and never what the run had on -----------------------------------------------------------
EVERY_VERDICT = [(nan_run, {}), (good_run, {"val_size": 20}), (lambda: good_run()[:2], {}),
                 (lambda: history([2.3, 1.0, 0.5, 0.4, 1.8, 1.9], [2.3, 1.1, 0.6, 0.5, 1.9, 2.0],
                                  [0.2, 0.6, 0.8, 0.85, 0.4, 0.4], [0.2, 0.6, 0.8, 0.85, 0.4, 0.4]), {}),
                 (issue20_run, {"val_size": 153, "val_counts": ISSUE20_COUNTS}), (u_shaped_run, {}),
                 (good_run, {"val_size": 2000}), (underfit_run, {}), (chance_run, {"num_classes": 10}),
                 (plateau_run, {}), (lambda: stalled_run(3), {}), (issue20_run, {})]


def test_every_verdict_is_reachable_and_has_advice():
    verdicts = {diagnose(make(), **kwargs).verdict for make, kwargs in EVERY_VERDICT}
    assert verdicts == set(Verdict)


@pytest.mark.parametrize("make, kwargs", EVERY_VERDICT)
def test_advice_names_cli_flags_and_never_what_is_on(make, kwargs):
    everything_on = {"augment": "default", "dropout": 0.5, "pretrained": True, "patience": 4, "img_size": 64}
    result = diagnose(make(), **kwargs, **everything_on)
    advice = " ".join(result.advice)
    assert result.advice
    for python_spelling in ("='", "val_fraction", "weight_decay", "the dropout option", "lr=", "img_size"):
        assert python_spelling not in advice
    for already_on in ("--augment default", "--pretrained", "--dropout 0.5", "--patience", "--img-size 32"):
        assert already_on not in advice, result.describe()
    # the same run with nothing known names what may help, as flags
    unknown = " ".join(diagnose(make(), **kwargs).advice)
    assert all(python_spelling not in unknown for python_spelling in ("='", "val_fraction", "weight_decay"))


def test_a_time_budget_turns_more_epochs_into_more_time():
    result = diagnose(underfit_run(), time_budget="2m")
    assert result.advice[0].startswith("Give it more time than --time 2m")
    assert not any("--epochs" in a for a in result.advice)
    assert result.evidence[-1] == "the run was limited by its time budget (--time 2m): 10 epochs fit in it"


# --- too few validation images --------------------------------------------------------------------------------------
def test_too_few_val_reports_the_interval_and_how_many_images_would_do():
    rows = good_run()
    rows[-1]["val_acc"] = 0.93
    result = diagnose(rows, val_size=20)
    low, high = result.val_acc_interval
    assert (low, high) == pytest.approx(wilson_interval(19, 20))  # 93% of 20 rounds to 19 correct
    assert high - low > dg.MAX_INTERVAL_WIDTH
    assert result.evidence[0].startswith("validation accuracy 93.0% at epoch 20 on 20 images: 95% interval "
                                         f"{100 * low:.1f}%-{100 * high:.1f}%")
    needed = int(result.advice[0].split("About ")[1].split()[0])
    p = 0.93  # the observed accuracy
    w = lambda n: (lambda lo_hi: lo_hi[1] - lo_hi[0])(wilson_interval(round(p * n), n))  # noqa: E731
    assert w(needed) <= dg.MAX_INTERVAL_WIDTH < w(needed - 1)


def test_too_few_val_comes_before_overfitting():
    assert diagnose(u_shaped_run(), val_size=30).verdict == TOO_FEW_VAL
    assert diagnose(u_shaped_run(), val_size=0).verdict == TOO_FEW_VAL


def test_missing_validation_metrics_is_too_few_val():
    rows = history(decay(8, 2.0, 0.2), [None] * 8, rise(8, 0.3, 0.9), [None] * 8)
    result = diagnose(rows)
    assert result.verdict == TOO_FEW_VAL
    assert result.best_epoch is None


# --- underfitting and plateau ----------------------------------------------------------------------------------------
def test_underfitting_evidence():
    result = diagnose(underfit_run())
    assert result.evidence[0].startswith("training accuracy only ")
    assert "still falling" in result.evidence[1]
    assert any("more epochs" in a for a in result.advice) and any("larger model" in a for a in result.advice)


def test_flat_at_chance_is_underfitting_with_a_label_check():
    result = diagnose(chance_run(), num_classes=10)
    assert any("ln(10) = 2.3" in e for e in result.evidence)
    assert "labels" in result.advice[0]


def test_plateau_evidence_mentions_stall_and_constant_learning_rate():
    result = diagnose(plateau_run(), num_classes=5)
    assert result.evidence[0] == "no validation improvement since epoch 5: 10 epochs without progress"
    assert "learning rate stayed at 0.0003 for the whole run" in result.evidence
    assert "schedule" in result.advice[0]


def stalled_run(stalled_epochs):
    """Val results stop improving for stalled_epochs epochs while train loss still creeps down 3% an epoch."""
    n = 6 + stalled_epochs
    val_loss = [1.2 - 0.1 * e for e in range(6)] + [0.7] * stalled_epochs
    val_acc = [0.5 + 0.05 * e for e in range(6)] + [0.75] * stalled_epochs
    train_loss = [1.2 * 0.97 ** e for e in range(n)]
    return history(train_loss, val_loss, [0.83] * n, val_acc)


def test_plateau_needs_plateau_epochs_when_training_loss_still_falls():
    assert diagnose(stalled_run(4)).verdict == PLATEAU
    result = diagnose(stalled_run(3))
    assert result.verdict == STILL_IMPROVING  # still improving on the training set: give it more epochs
    assert ("training loss still falling: it fell 8.7% over epochs 6-9 (fitted line 1.03 to 0.94); validation "
            "results have not improved over those epochs") in result.evidence


# --- short, empty and odd histories ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2])
def test_short_history_is_too_short_to_tell(n):
    rows = good_run()[:n]
    result = diagnose(rows, val_size=1000, num_classes=10)
    assert result.verdict == TOO_SHORT  # its own verdict, so a table of runs does not call it underfitting
    assert "Too short to tell" in result.headline
    assert result.best_epoch == (None if n == 0 else n)


def test_single_epoch_nan_is_diverging():
    assert diagnose(nan_run()[2:3]).verdict == DIVERGING


def test_values_read_from_csv_strings_and_gaps_in_val():
    rows = [{k: str(v) for k, v in row.items()} for row in u_shaped_run()]
    rows[3]["val_loss"] = ""  # an epoch without validation
    result = diagnose(rows)
    assert result.verdict == OVERFITTING
    assert result.best_epoch == 6


# --- Wilson interval --------------------------------------------------------------------------------------------------
def test_wilson_known_values():
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(8, 10, z=2.576)  # 99%: wider than the 95% interval
    assert high - low > wilson_interval(8, 10)[1] - wilson_interval(8, 10)[0]


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes=11, n=10"):
        wilson_interval(11, 10)


# --- output -----------------------------------------------------------------------------------------------------------
def test_describe_and_to_dict():
    result = diagnose(u_shaped_run(), val_size=2000)
    text = result.describe()
    assert result.headline in text and text.startswith("Overfitting: ")
    assert all(e in text for e in result.evidence)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["verdict"] == "overfitting" and data["best_epoch"] == 6
    assert data["val_acc_interval"] == pytest.approx(list(result.val_acc_interval))
    assert isinstance(result, Diagnosis)
    with pytest.raises(AttributeError):
        result.verdict = GOOD_FIT  # frozen


def test_verdict_strings_are_stable():
    assert [str(v) for v in Verdict] == ["underfitting", "overfitting", "good_fit", "plateau", "diverging",
                                         "too_few_val", "too_short", "no_better_than_chance", "still_improving"]
    assert TOO_SHORT.label == "Too short to tell" and GOOD_FIT.label == "Good fit"
    assert NO_BETTER.label == "No better than chance" and STILL_IMPROVING.label == "Still improving"


@pytest.mark.slow
def test_a_run_that_memorises_without_generalising_is_no_better_than_chance(tmp_path):
    """Few training images, many validation images, no augmentation, no dropout: an MLP learns its 45 training
    images by heart and the 135 validation images at chance. Its curves alone look like overfitting (validation
    loss rising while training loss falls), which is what they were called until issue 20; the run's own verdict
    says what matters first: it learned nothing that carries over."""
    from cnnlab.data.synth import synthesize
    from cnnlab.commands.train import fit

    data = tmp_path / "few"
    synthesize(data, classes=3, per_class=60, size=128, seed=1, val_fraction=0.75)  # 15 train, 45 val per class
    result = fit(data=str(data), img_size=32, epochs=15, augment="none", dropout=0.0, weight_decay=0.0,
                 schedule="constant", lr=1e-3, batch_size=8, workers=0, out=str(tmp_path / "run"), cache="off",
                 model="mlp", model_options={"hidden": 256}, label_smoothing=0.0, ema=False, progressive=False,
                 precision="fp32", verbose=False)
    verdict = result.diagnosis
    lowest = min(result.history, key=lambda row: row["val_loss"])["epoch"]
    assert verdict.verdict == NO_BETTER, verdict.describe()
    assert verdict.best_epoch == lowest == result.best_epoch
    assert result.history[-1]["train_acc"] >= dg.UNDERFIT_TRAIN_ACC  # it fits its training images
    assert diagnose(result.history).verdict == OVERFITTING  # the curves without the validation counts
    inputs = json.loads((result.run_dir / "diagnosis.json").read_text())["inputs"]
    assert inputs["val_counts"] == {"circle": 45, "square": 45, "triangle": 45} and inputs["augment"] == "none"
    assert ("Turn data augmentation on (--augment default; this run had --augment none) so each epoch sees new "
            "variants of every image.") in verdict.advice
    assert not any("--epochs" in a for a in verdict.advice)  # more epochs do not help what is memorised
