"""Is my network well trained? Read a run's learning curves and return a verdict, the evidence and advice.

The lecture answers "how do I know when a network is well trained?" with learning curves and the tricks that
fix what they show (dropout, data augmentation, early stopping, more data). This module reads the curves for
you. It is pure: it takes the history cnnlab writes (one dict per epoch with keys epoch, lr, train_loss,
train_acc, val_loss, val_acc, seconds; accuracies in [0, 1]; NaN/inf where training diverged; a missing key or
None where a metric was not recorded) and returns a Diagnosis. No torch, no I/O, no printing.

Precedence, first match wins (each later rule may assume the earlier ones did not apply). Facts come first,
then what makes trends unreadable, then the trends:
  1. DIVERGING     a loss became NaN/inf: a fact, not a trend; nothing else is trustworthy.
  2. TOO_FEW_VAL   no validation metrics, or the 95% Wilson interval of validation accuracy is wider than
                   MAX_INTERVAL_WIDTH: reading the curves further would be reading noise.
  3. TOO_SHORT     fewer than MIN_EPOCHS epochs: no trend can be read; the remedy is to train longer.
  4. DIVERGING     training loss climbed above where it started, or blew back up, and did not recover by the end.
  5. OVERFITTING   validation loss rose well above its minimum and stayed there while training loss kept falling,
                   or training accuracy is OVERFIT_GAP or more above validation accuracy.
  6. GOOD_FIT      validation accuracy high, not far below training accuracy, validation loss at/near its minimum.
  7. UNDERFITTING  training accuracy low and still rising, or train and val loss close and both high.
  8. PLATEAU       neither validation loss nor validation accuracy improved for PLATEAU_EPOCHS epochs.
  9. UNDERFITTING  still improving (a new best val loss/accuracy in the last TREND_EPOCHS epochs, or train loss
                   still falling) but not good yet: train longer.
 10. PLATEAU       anything else: nothing improves any more, even if for fewer than PLATEAU_EPOCHS epochs.
Every piece of evidence is listed under the verdict it supports: e.g. a learning rate is named as the likely
cause of a divergence only when it was high (HIGH_LR_SHARE of the run's peak) at the epoch the loss went up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

# --- thresholds: each is a judgement call; the comment gives the reason -------------------------------------
MIN_EPOCHS = 3  # a trend (rising, falling, flat) needs at least three points
DIVERGE_ABOVE_FIRST = 1.10  # epoch 1's mean loss includes the untrained start; 10% above it later means going backwards
DIVERGE_MIN_LOSS = 0.1  # a loss below this is already small; wiggles there are noise, not a blow-up
DIVERGE_REBOUND = 0.5  # climbing back by half of epoch 1's loss after reaching a lower value is a blow-up, not noise
RECOVERED = 0.05  # a final training loss within 5% of the lowest one: the run came back, it is not diverging now
HIGH_LR_SHARE = 0.5  # an LR at half the run's peak or more can be blamed for a blow-up; a decayed one cannot
WILSON_Z = 1.96  # two-sided 95% normal quantile
MAX_INTERVAL_WIDTH = 0.20  # if "85%" could be anything from 75% to 95%, good and bad fits cannot be told apart
OVERFIT_RISE = 0.10  # val loss jitters a few % from epoch to epoch; 10% above its minimum is a real turn
OVERFIT_WINDOW = 2  # that rise must hold for each of the last 2 epochs, so one bad epoch is not called overfitting
TRAIN_FALL = 0.05  # train loss must fall 5%+ after the best epoch: the network memorises, it has not merely stalled
OVERFIT_GAP = 0.10  # 10+ points more accurate on training than validation images: it fits what it cannot generalise
GOOD_VAL_ACC = 0.80  # below 80% few users call a classifier good (task-dependent: raise it for easy tasks)
UNDERFIT_TRAIN_ACC = 0.80  # a network below the "good" level on its own training images has not fit them yet
TREND_EPOCHS = 3  # "still falling" compares the last epoch with the one 3 earlier, which smooths epoch-to-epoch noise
STILL_FALLING = 0.02  # a 2% loss drop over those epochs is progress worth more epochs; less is noise
LOSS_CLOSE = 0.15  # train and val loss within 15% of each other: no generalisation gap to blame
HIGH_LOSS_OF_CHANCE = 0.5  # loss above half the chance level ln(num_classes) has not come half the way
CHANCE_LOSS = 0.9  # loss at 90%+ of ln(num_classes): the network is still guessing
PLATEAU_EPOCHS = 4  # four epochs without progress is beyond noise; also a sensible early-stopping patience
LOSS_MIN_DELTA = 0.01  # val loss must beat its best by 1% to count as an improvement
ACC_MIN_DELTA = 0.005  # val accuracy must beat its best by half a point to count as an improvement


class Verdict(StrEnum):
    """What the learning curves say; the value is the stable string written to JSON."""

    UNDERFITTING = "underfitting"
    OVERFITTING = "overfitting"
    GOOD_FIT = "good_fit"
    PLATEAU = "plateau"
    DIVERGING = "diverging"
    TOO_FEW_VAL = "too_few_val"
    TOO_SHORT = "too_short"

    @property
    def label(self) -> str:
        """The verdict in words, e.g. "Too short to tell"."""
        return {"good_fit": "Good fit", "too_few_val": "Too few validation images",
                "too_short": "Too short to tell"}.get(self.value, self.value.capitalize())


UNDERFITTING = Verdict.UNDERFITTING
OVERFITTING = Verdict.OVERFITTING
GOOD_FIT = Verdict.GOOD_FIT
PLATEAU = Verdict.PLATEAU
DIVERGING = Verdict.DIVERGING
TOO_FEW_VAL = Verdict.TOO_FEW_VAL
TOO_SHORT = Verdict.TOO_SHORT


@dataclass(frozen=True)
class Diagnosis:
    """The verdict on one run, the numbers behind it and what to do next."""

    verdict: Verdict
    """One of the Verdict values."""
    headline: str
    """One plain-language sentence."""
    evidence: list[str] = field(default_factory=list)
    """Short sentences with the numbers that led to the verdict."""
    advice: list[str] = field(default_factory=list)
    """Concrete next steps, most useful first."""
    best_epoch: int | None = None
    """Epoch with the lowest validation loss (the weights best.safetensors keeps), or None."""
    val_acc_interval: tuple[float, float] | None = None
    """95% Wilson interval of validation accuracy at the best (else last) epoch; None without val_size."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        interval = list(self.val_acc_interval) if self.val_acc_interval is not None else None
        return {"verdict": str(self.verdict), "headline": self.headline, "evidence": list(self.evidence),
                "advice": list(self.advice), "best_epoch": self.best_epoch, "val_acc_interval": interval}

    def describe(self) -> str:
        """A few lines for the terminal: verdict and headline, then evidence and advice as bullets."""
        label = self.verdict.label
        # "Too short to tell: 2 epochs recorded" says its verdict itself; others get it in front
        lines = [self.headline if self.headline.lower().startswith(label.lower()) else f"{label}: {self.headline}"]
        lines += [f"  - {item}" for item in self.evidence]
        if self.advice:
            lines.append("What to try:")
            lines += [f"  * {item}" for item in self.advice]
        return "\n".join(lines)


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval for a proportion successes/n; (0.0, 1.0) when n == 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def diagnose(history: list[dict[str, Any]], val_size: int | None = None,
             num_classes: int | None = None, time_budget: str | None = None) -> Diagnosis:
    """Judge a training history (one dict per epoch) as one Verdict, with evidence and advice.

    `time_budget` (e.g. "10m"): the run trained for a wall-clock budget (--time), so its length was the
    budget's, not a choice of epochs: the evidence says so, and "train longer" becomes "give it more time"."""
    curves = _Curves.from_history(history)
    best = _best_epoch(curves)
    interval, interval_line, accuracy = _val_interval(curves, best, val_size)
    finding = (_check_not_finite(curves)
               or _check_validation(curves, interval, interval_line, accuracy, val_size)
               or _check_too_short(curves)
               or _check_diverging(curves)
               or _check_overfitting(curves, best)
               or _check_good_fit(curves, best)
               or _check_underfitting(curves, num_classes)
               or _check_plateau(curves, PLATEAU_EPOCHS)
               or _check_still_improving(curves)
               or _check_plateau(curves, 0))
    evidence, advice = list(finding.evidence), list(finding.advice)
    if interval_line and interval_line not in evidence:
        evidence.append(interval_line)
    if time_budget:
        n = len(curves.epochs)
        evidence.append(f"the run was limited by its time budget (--time {time_budget}): {n} epoch{'s' if n != 1 else ''} "
                        "fit in it")
        if finding.verdict in (UNDERFITTING, TOO_SHORT):
            advice = [a for a in advice if "more epochs" not in a.lower()]
            advice.insert(0, f"Give it more time than --time {time_budget} (a longer budget plans more epochs), or "
                             "make each epoch cheaper (a smaller --img-size).")
    return Diagnosis(finding.verdict, finding.headline, evidence, advice, best, interval)


# --- reading the history ----------------------------------------------------------------------------------------
Points = list[tuple[int, float]]  # (epoch, value) for the epochs where the metric was recorded


@dataclass
class _Curves:
    """The history as columns; None marks a metric not recorded (NaN stays NaN: that is divergence)."""

    epochs: list[int]
    columns: dict[str, list[float | None]]

    @classmethod
    def from_history(cls, history: list[dict[str, Any]]) -> _Curves:
        epochs = [_epoch(row.get("epoch"), i + 1) for i, row in enumerate(history)]
        columns = {name: [_number(row.get(name)) for row in history] for name in ("train_loss", "val_loss")}
        for name in ("lr", "train_acc", "val_acc"):  # only losses diverge; a NaN here is a gap in the record
            columns[name] = [v if v is not None and math.isfinite(v) else None
                             for v in (_number(row.get(name)) for row in history)]
        return cls(epochs, columns)

    def points(self, name: str) -> Points:
        """(epoch, value) pairs of one metric, skipping epochs where it was not recorded."""
        return [(e, v) for e, v in zip(self.epochs, self.columns[name]) if v is not None]

    def at(self, name: str, epoch: int) -> float | None:
        """The metric at one epoch, or None."""
        return dict(self.points(name)).get(epoch)


def _number(value: Any) -> float | None:
    """A float, or None for a missing/blank value (CSV-read histories hold strings)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _epoch(value: Any, default: int) -> int:
    """The recorded 1-based epoch number, or the row position when it is missing or not a number."""
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else default


def _best_epoch(c: _Curves) -> int | None:
    """Epoch of the lowest finite validation loss (the earliest on ties), or None."""
    finite = [(v, e) for e, v in c.points("val_loss") if math.isfinite(v)]
    return min(finite)[1] if finite else None


def _loss(x: float) -> str:
    return f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


class _Finding(NamedTuple):
    verdict: Verdict
    headline: str
    evidence: list[str]
    advice: list[str]


# --- 1. diverging: a loss that is not a number -------------------------------------------------------------------
def _check_not_finite(c: _Curves) -> _Finding | None:
    """A NaN or infinite loss at any epoch."""
    for label, name in (("training loss", "train_loss"), ("validation loss", "val_loss")):
        for epoch, v in c.points(name):
            if not math.isfinite(v):
                return _diverged(c, f"{label} became {'NaN' if math.isnan(v) else 'infinite'} at epoch {epoch}",
                                 epoch)
    return None


# --- 4. diverging: a training loss going up -----------------------------------------------------------------------
def _check_diverging(c: _Curves) -> _Finding | None:
    """A training loss above where it started, or one that blew back up, and still up at the last epoch."""
    train = c.points("train_loss")
    if not train:
        return None
    lowest = min(v for _, v in train)
    if train[-1][1] <= lowest * (1 + RECOVERED) or train[-1][1] <= DIVERGE_MIN_LOSS:
        return None  # the last epoch is (about) the best: whatever went up came back down
    first_epoch, first = train[0]
    low_epoch, low = train[0]
    for epoch, v in train[1:]:
        if v > first * DIVERGE_ABOVE_FIRST and v > DIVERGE_MIN_LOSS:
            return _diverged(c, f"training loss rose from {_loss(first)} at epoch {first_epoch} to {_loss(v)} "
                                f"at epoch {epoch} instead of falling", epoch)
        if v - low > DIVERGE_REBOUND * first:
            return _diverged(c, f"training loss jumped from {_loss(low)} at epoch {low_epoch} to {_loss(v)} "
                                f"at epoch {epoch}", epoch)
        if v < low:
            low_epoch, low = epoch, v
    return None


def _diverged(c: _Curves, what: str, epoch: int) -> _Finding:
    """The finding for a loss that went wrong at `epoch`; the learning rate is blamed only if it was high then."""
    evidence = [what]
    lr = c.at("lr", epoch)
    peak = max((v for _, v in c.points("lr")), default=None)
    if lr is not None and peak and lr >= HIGH_LR_SHARE * peak:
        evidence.append(f"learning rate at epoch {epoch}: {lr:.3g}" + (f" (the run's peak: {peak:.3g})"
                                                                         if lr != peak else ""))
        return _Finding(DIVERGING, "Training diverged: the learning rate is probably too high.", evidence, [
            "Lower the learning rate 3-10x, or set lr='auto' to let the LR finder pick one.",
            "Keep a warm-up (the onecycle or cosine schedule) so the first steps take small steps.",
            "If the loss turned NaN with fp16 precision, use bf16 or fp32 instead.",
        ])
    return _Finding(DIVERGING, "Training diverged, and not because of a high learning rate at that point.", evidence, [
        "Check the data: `cnnlab data check` finds unreadable, blank and mislabelled images.",
        "Use --precision fp32 if the loss turned NaN or inf in reduced precision.",
        "Lower the learning rate (or set lr='auto') if the loss went up early in the run.",
    ])


# --- 2. validation: missing or too small --------------------------------------------------------------------------
def _val_interval(c: _Curves, best: int | None,
                  val_size: int | None) -> tuple[tuple[float, float] | None, str, float | None]:
    """Wilson interval of validation accuracy at the best epoch (else the last), its evidence line, the accuracy."""
    accuracies = c.points("val_acc")
    if val_size is None or not accuracies:
        return None, "", None
    epoch, acc = next(((e, v) for e, v in accuracies if e == best), accuracies[-1])
    n = max(0, int(val_size))
    low, high = wilson_interval(min(n, max(0, round(acc * n))), n)
    line = (f"validation accuracy {_pct(acc)} at epoch {epoch} on {n} images: 95% interval "
            f"{_pct(low)}-{_pct(high)} ({100 * (high - low):.1f} points wide)")
    return (low, high), line, acc


def _check_validation(c: _Curves, interval: tuple[float, float] | None, line: str, accuracy: float | None,
                      val_size: int | None) -> _Finding | None:
    """No validation metrics at all, or too few validation images for the accuracy to mean much."""
    advice_split = "Hold out more validation images (a larger val_fraction, or a bigger val/ folder)."
    if not c.epochs:
        return None  # nothing recorded at all: the too-short rule says so
    if not c.points("val_loss") and not c.points("val_acc"):
        return _Finding(TOO_FEW_VAL, "No validation metrics were recorded, so the fit cannot be judged.",
                        ["no epoch has val_loss or val_acc"],
                        ["Train with a validation split (val_fraction > 0, or a val/ folder)."])
    if interval is None or accuracy is None or interval[1] - interval[0] <= MAX_INTERVAL_WIDTH:
        return None
    width = interval[1] - interval[0]
    needed = _images_needed(accuracy)
    return _Finding(TOO_FEW_VAL, f"Too few validation images to tell: with {val_size} images, validation accuracy "
                                 f"could be anywhere in a {100 * width:.0f}-point range.", [line], [
        f"{advice_split} About {needed} images would narrow the interval to "
        f"{100 * MAX_INTERVAL_WIDTH:.0f} points.",
        "Until then, treat the learning curves as a rough guide and compare runs with care.",
    ])


def _images_needed(p: float) -> int:
    """Smallest validation size whose Wilson interval at accuracy p is at most MAX_INTERVAL_WIDTH wide."""
    for n in range(1, 1_000_000):  # about 100 steps for a 20-point width (the widest case is p = 0.5)
        low, high = wilson_interval(round(p * n), n)
        if high - low <= MAX_INTERVAL_WIDTH:
            return n
    return 1_000_000


# --- 3. too short ------------------------------------------------------------------------------------------------
def _check_too_short(c: _Curves) -> _Finding | None:
    """Fewer than MIN_EPOCHS epochs: no trend can be read, and more epochs is the remedy either way."""
    n = len(c.epochs)
    if n >= MIN_EPOCHS:
        return None
    return _Finding(TOO_SHORT, f"Too short to tell: {n} epoch{'s' if n != 1 else ''} recorded; "
                                  "train for more epochs.",
                    [f"{n} epoch{'s' if n != 1 else ''} recorded; reading a trend needs at least {MIN_EPOCHS}"],
                    ["Train for more epochs (10 or more) so the learning curves show a trend."])


# --- 5. overfitting ----------------------------------------------------------------------------------------------
def _val_rise(c: _Curves) -> tuple[int, float, float] | None:
    """(best epoch, lowest val loss, lowest val loss over the last OVERFIT_WINDOW epochs after it), or None."""
    val = c.points("val_loss")
    if not val:
        return None
    i = min(range(len(val)), key=lambda k: val[k][1])
    if i >= len(val) - OVERFIT_WINDOW:
        return val[i][0], val[i][1], val[i][1]  # the minimum is among the last epochs: no rise
    return val[i][0], val[i][1], min(v for _, v in val[-OVERFIT_WINDOW:])


def _rose(rise: tuple[int, float, float] | None) -> bool:
    """True when val loss stayed OVERFIT_RISE or more above its minimum over the last epochs."""
    return rise is not None and rise[2] >= rise[1] + OVERFIT_RISE * max(rise[1], 1e-12)


def _final_gap(c: _Curves) -> tuple[int, float, float] | None:
    """(epoch, train acc, val acc) at the last epoch that has both, or None."""
    train = dict(c.points("train_acc"))
    both = [(e, train[e], v) for e, v in c.points("val_acc") if e in train]
    return both[-1] if both else None


def _gap_line(gap: tuple[int, float, float]) -> str:
    epoch, train, val = gap
    return (f"final train-val accuracy gap: {100 * (train - val):.1f} points "
            f"(train {_pct(train)}, val {_pct(val)} at epoch {epoch})")


def _check_overfitting(c: _Curves, best: int | None) -> _Finding | None:
    """Val loss turned up while train loss kept falling, or train accuracy far above val accuracy."""
    rise = _val_rise(c)
    turned = None
    if _rose(rise):
        best_epoch, best_loss, _ = rise
        last_epoch, last_loss = c.points("val_loss")[-1]
        train_then, train_now = c.at("train_loss", best_epoch), c.at("train_loss", last_epoch)
        if train_then is not None and train_now is not None and train_now <= train_then * (1 - TRAIN_FALL):
            turned = (f"validation loss was lowest at epoch {best_epoch} ({_loss(best_loss)}) and rose to "
                      f"{_loss(last_loss)} by epoch {last_epoch} while training loss kept falling from "
                      f"{_loss(train_then)} to {_loss(train_now)}")
    gap = _final_gap(c)
    wide = gap is not None and gap[1] - gap[2] >= OVERFIT_GAP
    if turned is None and not wide:
        return None
    evidence = [turned] if turned else []
    if gap is not None:
        evidence.append(_gap_line(gap))
    if turned:
        headline = (f"The network is overfitting: after epoch {best} it kept getting better on the training "
                    "images but worse on the validation images.")
    else:
        headline = (f"The network is overfitting: it is {100 * (gap[1] - gap[2]):.0f} points more accurate on "
                    "training images than on validation images.")
    advice = []
    if best is not None and best != c.epochs[-1]:
        advice.append(f"Use the weights from epoch {best} (best.safetensors), not the last epoch; set patience "
                      f"(e.g. {PLATEAU_EPOCHS}) for early stopping to stop there next time.")
    advice += ["Add or raise dropout (the dropout option, e.g. 0.5) so the network cannot memorise single images.",
               "Use data augmentation (augment='default') so each epoch sees new variants of every image.",
               "Collect more training images: the most reliable cure; raising weight_decay also helps."]
    return _Finding(OVERFITTING, headline, evidence, advice)


# --- 6. good fit ---------------------------------------------------------------------------------------------------
def _check_good_fit(c: _Curves, best: int | None) -> _Finding | None:
    """High validation accuracy, close to training accuracy, validation loss at or near its minimum at the end."""
    val_acc = c.points("val_acc")
    if not val_acc or val_acc[-1][1] < GOOD_VAL_ACC:
        return None
    gap = _final_gap(c)
    if gap is not None and gap[1] - gap[2] >= OVERFIT_GAP:
        return None
    rise = _val_rise(c)
    if _rose(rise):
        return None
    epoch, acc = val_acc[-1]
    evidence = [_gap_line(gap) if gap is not None else f"validation accuracy {_pct(acc)} at epoch {epoch}"]
    last_epoch, last_loss = c.points("val_loss")[-1] if rise is not None else (None, None)
    if rise is not None and rise[0] == last_epoch:
        evidence.append(f"validation loss was lowest at the last epoch ({_loss(last_loss)} at epoch {last_epoch})")
    elif rise is not None:
        evidence.append(f"validation loss ended at {_loss(last_loss)} (epoch {last_epoch}), within "
                        f"{100 * OVERFIT_RISE:.0f}% of its minimum {_loss(rise[1])} at epoch {rise[0]}")
    advice = []
    if best is not None:
        advice.append(f"Keep the weights from epoch {best} (best.safetensors).")
    if _still_falling(c.points("val_loss")):
        advice.append("Validation loss was still falling at the end: a few more epochs may gain a little more.")
    advice.append("Confirm on images the network has never seen (a test split) before trusting it.")
    return _Finding(GOOD_FIT, f"The network looks well trained: {_pct(acc)} validation accuracy, close to "
                              "training accuracy, with validation loss at or near its best.", evidence, advice)


# --- 7. underfitting -----------------------------------------------------------------------------------------------
def _still_falling(points: Points) -> bool:
    """True when the last value is STILL_FALLING below the one TREND_EPOCHS epochs earlier."""
    if len(points) < 2:
        return False
    old = points[max(0, len(points) - 1 - TREND_EPOCHS)][1]
    return old > 0 and (old - points[-1][1]) / old >= STILL_FALLING


_UNDERFIT_ADVICE = ["Train for more epochs.",
                    "Try a larger model (more channels or layers, or a pretrained torchvision model).",
                    "Lower dropout or use lighter augmentation if they are strong: they make training harder."]


def _check_underfitting(c: _Curves, num_classes: int | None) -> _Finding | None:
    """Train accuracy low and still rising, or train and val loss close together and both high."""
    train_acc, train_loss, val_loss = c.points("train_acc"), c.points("train_loss"), c.points("val_loss")
    if train_acc and train_acc[-1][1] < UNDERFIT_TRAIN_ACC and _still_falling(train_loss):
        epoch, acc = train_acc[-1]
        old_epoch, old_loss = train_loss[max(0, len(train_loss) - 1 - TREND_EPOCHS)]
        return _Finding(UNDERFITTING, f"The network is underfitting: it has not learned the training images yet "
                                      f"({_pct(acc)} training accuracy) and was still improving.", [
            f"training accuracy only {_pct(acc)} at epoch {epoch}",
            f"training loss still falling: {_loss(old_loss)} at epoch {old_epoch} to "
            f"{_loss(train_loss[-1][1])} at epoch {train_loss[-1][0]}",
        ], list(_UNDERFIT_ADVICE))
    if not train_loss or not val_loss:
        return None
    t, v = train_loss[-1][1], val_loss[-1][1]
    if abs(v - t) > LOSS_CLOSE * max(t, v):
        return None
    evidence = [f"training loss {_loss(t)} and validation loss {_loss(v)} are close: no generalisation gap"]
    advice = list(_UNDERFIT_ADVICE)
    if num_classes is not None and num_classes >= 2:
        chance = math.log(num_classes)
        if min(t, v) < HIGH_LOSS_OF_CHANCE * chance:
            return None
        evidence.append(f"both are high: chance level for {num_classes} classes is ln({num_classes}) = "
                        f"{_loss(chance)}, and training loss is {100 * t / chance:.0f}% of it")
        if t >= CHANCE_LOSS * chance:
            advice.insert(0, "The loss is at chance level: check that the labels match the images, and try "
                             "another learning rate (lr='auto').")
    elif not train_acc or train_acc[-1][1] >= UNDERFIT_TRAIN_ACC:
        return None
    else:
        evidence.append(f"training accuracy only {_pct(train_acc[-1][1])}")
    return _Finding(UNDERFITTING, "The network is underfitting: training and validation loss are both high, "
                                  "so it is too weak or too briefly trained for the task.", evidence, advice)


# --- 8. plateau ----------------------------------------------------------------------------------------------------
def _last_improvement(points: Points, higher_is_better: bool) -> int | None:
    """Epoch of the last value that beat the best so far by the metric's min delta."""
    last, best = None, None
    for epoch, v in points:
        if best is None:
            better = True
        elif higher_is_better:
            better = v > best + ACC_MIN_DELTA
        else:
            better = v < best * (1 - LOSS_MIN_DELTA)
        if better:
            last, best = epoch, v
    return last


def _check_plateau(c: _Curves, min_epochs: int) -> _Finding | None:
    """Neither validation loss nor validation accuracy improved for min_epochs epochs."""
    val_loss, val_acc = c.points("val_loss"), c.points("val_acc")
    marks = [m for m in (_last_improvement(val_loss, False), _last_improvement(val_acc, True)) if m is not None]
    if not marks:
        return None
    since = max(marks)
    stalled = c.epochs[-1] - since
    if stalled < min_epochs:
        return None
    evidence = [f"no validation improvement since epoch {since}: {stalled} epochs without progress"]
    if val_loss:
        evidence.append(f"validation loss {_loss(c.at('val_loss', since) or val_loss[-1][1])} at epoch {since}, "
                        f"{_loss(val_loss[-1][1])} at epoch {val_loss[-1][0]}")
    if val_acc:
        evidence.append(f"best validation accuracy {_pct(max(v for _, v in val_acc))}")
    advice = ["Lower the learning rate (e.g. 10x) or use a schedule that decays it (cosine or onecycle)."]
    lrs = [v for _, v in c.points("lr")]
    if len(lrs) >= 2 and lrs[0] == lrs[-1]:
        evidence.append(f"learning rate stayed at {lrs[-1]:.3g} for the whole run")
        advice[0] = ("The learning rate never decayed: use the cosine or onecycle schedule, or lower the learning "
                     "rate 10x.")
    advice += ["Try a larger model (more channels or layers, or a pretrained torchvision model).",
               f"Set patience (e.g. {PLATEAU_EPOCHS}) for early stopping so stalled runs end sooner."]
    return _Finding(PLATEAU, f"Training has stalled: validation results have not improved for {stalled} epochs.",
                    evidence, advice)


# --- 9. anything else ---------------------------------------------------------------------------------------------
def _check_still_improving(c: _Curves) -> _Finding | None:
    """Not good, not overfitting, not stalled for long: still learning (more epochs) unless nothing improves now."""
    recent = c.epochs[-1] - TREND_EPOCHS
    last_best = max(_last_improvement(c.points("val_loss"), False) or 0,
                    _last_improvement(c.points("val_acc"), True) or 0)
    if not (last_best > recent or _still_falling(c.points("train_loss"))):
        return None  # nothing improved for TREND_EPOCHS epochs: a (short) plateau
    evidence = []
    val_acc = c.points("val_acc")
    if val_acc:
        short = f", below the {_pct(GOOD_VAL_ACC)} of a good fit" if val_acc[-1][1] < GOOD_VAL_ACC else ""
        evidence.append(f"validation accuracy {_pct(val_acc[-1][1])} at epoch {val_acc[-1][0]}{short}")
    if last_best > recent:
        evidence.append(f"validation results still improving: a new best at epoch {last_best}")
    else:
        evidence.append(f"training loss still falling over the last {TREND_EPOCHS} epochs")
    gap = _final_gap(c)
    if gap is not None:
        evidence.append(_gap_line(gap))
    return _Finding(UNDERFITTING, "The network is still learning: not good yet, but still improving; "
                                  "train for more epochs.", evidence, list(_UNDERFIT_ADVICE))
