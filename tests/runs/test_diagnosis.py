"""diagnose: synthetic learning curves for every verdict, the Wilson interval, and noise that must not fool it."""

import json
import math
import random

import pytest

from cnnlab.runs import diagnosis as dg
from cnnlab.runs.diagnosis import (DIVERGING, GOOD_FIT, OVERFITTING, PLATEAU, TOO_FEW_VAL, TOO_SHORT, UNDERFITTING,
                                   Diagnosis,
                             Verdict, diagnose, wilson_interval)


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


def test_large_accuracy_gap_alone_is_overfitting():
    n = 12  # val loss keeps falling, but training accuracy runs 20 points ahead
    result = diagnose(history(decay(n, 1.5, 0.02), decay(n, 1.5, 0.8), rise(n, 0.5, 1.0), rise(n, 0.5, 0.8)))
    assert result.verdict == OVERFITTING
    assert result.evidence == ["final train-val accuracy gap: 19.6 points (train 98.9%, val 79.4% at epoch 12)"]
    assert not any("best.safetensors" in a for a in result.advice)  # the best epoch is the last one


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
    assert result.verdict == UNDERFITTING  # still improving on the training set: give it more epochs
    assert "training loss still falling over the last 3 epochs" in result.evidence


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
                                         "too_few_val", "too_short"]
    assert TOO_SHORT.label == "Too short to tell" and GOOD_FIT.label == "Good fit"


def test_a_deliberately_overfitting_run_is_diagnosed_with_its_best_epoch(tmp_path):
    """Few training images, many validation images, no augmentation, no dropout, many epochs."""
    from cnnlab.data.synth import synthesize
    from cnnlab.commands.train import fit

    data = tmp_path / "few"
    synthesize(data, classes=3, per_class=60, size=128, seed=1, val_fraction=0.75)  # 15 train, 45 val per class
    result = fit(data=str(data), img_size=32, epochs=15, augment="none", dropout=0.0, weight_decay=0.0,
                 schedule="constant", lr=1e-3, batch_size=16, workers=0, out=str(tmp_path / "run"),
                 cache="off", model="simple_cnn", model_options={"widths": [16, 32]}, verbose=False)
    verdict = result.diagnosis
    lowest = min(result.history, key=lambda row: row["val_loss"])["epoch"]
    assert verdict.verdict == dg.OVERFITTING
    assert verdict.best_epoch == lowest == result.best_epoch
    assert result.history[-1]["train_loss"] < result.history[lowest - 1]["train_loss"]
