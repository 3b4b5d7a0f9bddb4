"""Is my network well trained? Read a run's learning curves and return a verdict, the evidence and advice.

The lecture answers "how do I know when a network is well trained?" with learning curves and the tricks that
fix what they show (dropout, data augmentation, early stopping, more data). This module reads the curves for
you. It is pure: it takes the history cnnlab writes (one dict per epoch with keys epoch, lr, train_loss,
train_acc, val_loss, val_acc, seconds; accuracies in [0, 1]; NaN/inf where training diverged; a missing key or
None where a metric was not recorded), the validation images per class and what the run had on, and returns a
Diagnosis. No torch, no I/O, no printing.

Precedence, first match wins (each later rule may assume the earlier ones did not apply). Facts come first,
then what makes trends unreadable, then the trends:
  1. DIVERGING       a loss became NaN/inf: a fact, not a trend; nothing else is trustworthy.
  2. TOO_FEW_VAL     no validation metrics, or the 95% Wilson interval of validation accuracy is wider than
                     MAX_INTERVAL_WIDTH: reading the curves further would be reading noise.
  3. TOO_SHORT       fewer than MIN_EPOCHS epochs: no trend can be read; the remedy is to train longer.
  4. DIVERGING       training loss climbed above where it started, or blew back up, and did not recover by the end.
  5. NO_BETTER       the 95% interval of the best validation accuracy reaches down to the rate of always answering
                     the largest validation class (1/K for K balanced classes): whatever shape the curves have,
                     the network has learned (almost) nothing that carries over to new images.
  6. OVERFITTING     validation loss rose OVERFIT_RISE above its best and stayed there for the last OVERFIT_WINDOW
                     epochs while training loss kept falling. A train-val accuracy gap alone is evidence, not this
                     verdict: while validation loss still falls, the network still gets better on new images.
  7. GOOD_FIT        validation accuracy high, not far below training accuracy, validation loss at/near its minimum.
  8. UNDERFITTING    training accuracy low and its loss still falling, or train and val loss close and both high.
  9. PLATEAU         neither validation loss nor validation accuracy improved for PLATEAU_EPOCHS epochs.
 10. STILL_IMPROVING not good yet, but the trend over the last TREND_WINDOW epochs still improves (validation
                     loss or accuracy, or training loss): train longer.
 11. PLATEAU         anything else: the recent epochs' trends are flat, even if for fewer than PLATEAU_EPOCHS epochs.
A trend is a robust line (Theil-Sen) through the last TREND_WINDOW epochs, never two chosen epochs. Every piece of
evidence is listed under the verdict it supports: e.g. a learning rate is named as the likely cause of a divergence
only when it was high (HIGH_LR_SHARE of the run's peak) at the epoch the loss went up. Advice names CLI flags and
never suggests what the run already had on (when the caller says what it had; None means unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import combinations
from statistics import median
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
# "Recent" is the last 4 epochs (all of them in shorter runs): the stretch PLATEAU_EPOCHS calls stalled when
# nothing improves, so "still improving" and "stalled" judge the same epochs. Through them goes the line whose slope
# is the median of the slopes between every two of them (Theil-Sen): one odd epoch at either end moves the change
# it reads across the 4 epochs by half of that epoch's jump (a comparison of two epochs: by all of it; a
# least-squares line: by 0.9 of it), so one lucky or unlucky epoch cannot make or hide a trend by itself.
TREND_WINDOW = 4
STILL_FALLING = 0.02  # a fitted loss drop of 2% across those epochs is progress worth more epochs; less is noise
STILL_RISING = 0.02  # a fitted rise of 2 accuracy points across them: several images of a few hundred, not one
LOSS_CLOSE = 0.15  # train and val loss within 15% of each other: no generalisation gap to blame
HIGH_LOSS_OF_CHANCE = 0.5  # loss above half the chance level ln(num_classes) has not come half the way
CHANCE_LOSS = 0.9  # loss at 90%+ of ln(num_classes): the network is still guessing
PLATEAU_EPOCHS = 4  # four epochs without progress is beyond noise; also a sensible early-stopping patience
LOSS_MIN_DELTA = 0.01  # val loss must beat its best by 1% to count as an improvement
ACC_MIN_DELTA = 0.005  # val accuracy must beat its best by half a point to count as an improvement
UNBALANCED = 1.5  # a largest class 1.5x its balanced share: accuracy alone then hides what the small classes get
STRONG_DROPOUT = 0.5  # the lecture's (and the original paper's) dropout; above it a network learns slowly
SMALL_IMG_SIZE = 64  # below 64 px most photos lose the object's shape; cnnlab's demo learns well at 64 px


class Verdict(StrEnum):
    """What the learning curves say; the value is the stable string written to JSON."""

    UNDERFITTING = "underfitting"
    OVERFITTING = "overfitting"
    GOOD_FIT = "good_fit"
    PLATEAU = "plateau"
    DIVERGING = "diverging"
    TOO_FEW_VAL = "too_few_val"
    TOO_SHORT = "too_short"
    NO_BETTER = "no_better_than_chance"
    STILL_IMPROVING = "still_improving"

    @property
    def label(self) -> str:
        """The verdict in words, e.g. "Too short to tell"."""
        return {"good_fit": "Good fit", "too_few_val": "Too few validation images",
                "too_short": "Too short to tell", "no_better_than_chance": "No better than chance",
                "still_improving": "Still improving"}.get(self.value, self.value.capitalize())


UNDERFITTING = Verdict.UNDERFITTING
OVERFITTING = Verdict.OVERFITTING
GOOD_FIT = Verdict.GOOD_FIT
PLATEAU = Verdict.PLATEAU
DIVERGING = Verdict.DIVERGING
TOO_FEW_VAL = Verdict.TOO_FEW_VAL
TOO_SHORT = Verdict.TOO_SHORT
NO_BETTER = Verdict.NO_BETTER
STILL_IMPROVING = Verdict.STILL_IMPROVING


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


class _Setup(NamedTuple):
    """What the run had on, for advice that never suggests it again (None: not known)."""

    epochs: int
    time_budget: str | None
    augment: str | None
    dropout: float | None
    pretrained: bool | None
    weights: str | None
    img_size: int | None
    patience: int | None


def diagnose(history: list[dict[str, Any]], val_size: int | None = None, num_classes: int | None = None,
             time_budget: str | None = None, *, val_counts: dict[str, int] | None = None,
             augment: str | None = None, dropout: float | None = None, pretrained: bool | None = None,
             weights: str | None = None, img_size: int | None = None, patience: int | None = None) -> Diagnosis:
    """Judge a training history (one dict per epoch) as one Verdict, with evidence and advice.

    `val_size`: validation images the accuracies were measured on; `val_counts`: those images per class
    ({class name: count}), whose largest share is what always answering one class scores (without them, 1 in
    `num_classes`). `time_budget` (e.g. "10m"): the run trained for a wall-clock budget (--time), so its
    length was the budget's: the evidence says so, and "train longer" becomes "give it more time".
    `augment`, `dropout`, `pretrained`, `weights`, `img_size` (the whole-image size; None for tiles) and
    `patience` are the run's options (TrainConfig's fields): advice never suggests what was already on; None
    means not known, and the advice then says "if it was off"."""
    curves = _Curves.from_history(history)
    setup = _Setup(len(curves.epochs), time_budget, augment, dropout, pretrained, weights, img_size, patience)
    if val_size is None and val_counts:
        val_size = sum(val_counts.values())
    best = _best_epoch(curves)
    interval, interval_line, accuracy = _val_interval(curves, best, val_size)
    finding = (_check_not_finite(curves)
               or _check_validation(curves, interval, interval_line, accuracy, val_size)
               or _check_too_short(curves, setup)
               or _check_diverging(curves)
               or _check_no_better(curves, val_size, val_counts, num_classes, setup)
               or _check_overfitting(curves, best, setup)
               or _check_good_fit(curves, best, setup)
               or _check_underfitting(curves, num_classes, setup)
               or _check_plateau(curves, setup)
               or _check_still_improving(curves, setup)
               or _levelled_off(curves, setup))
    evidence = list(finding.evidence)
    if interval_line and interval_line not in evidence:
        evidence.append(interval_line)
    if time_budget:
        n = len(curves.epochs)
        evidence.append(f"the run was limited by its time budget (--time {time_budget}): {n} epoch{'s' if n != 1 else ''} "
                        "fit in it")
    return Diagnosis(finding.verdict, finding.headline, evidence, list(finding.advice), best, interval)


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


# --- trends: a robust line through the recent epochs ------------------------------------------------------------------
class _Trend(NamedTuple):
    """The Theil-Sen line through the last TREND_WINDOW points of a metric, read at its two ends."""

    first_epoch: int
    last_epoch: int
    start: float
    end: float

    def span(self) -> str:
        return f"epochs {self.first_epoch}-{self.last_epoch}"


def _trend(points: Points) -> _Trend | None:
    """The line through the last TREND_WINDOW points (median pairwise slope), or None under MIN_EPOCHS of them."""
    recent = [(e, v) for e, v in points[-TREND_WINDOW:] if math.isfinite(v)]
    if len(recent) < MIN_EPOCHS:
        return None
    slope = median((v2 - v1) / (e2 - e1) for (e1, v1), (e2, v2) in combinations(recent, 2))
    intercept = median(v - slope * e for e, v in recent)
    first, last = recent[0][0], recent[-1][0]
    return _Trend(first, last, intercept + slope * first, intercept + slope * last)


def _loss_falling(points: Points) -> _Trend | None:
    """The recent trend of a loss if it falls by STILL_FALLING of its fitted start or more, else None."""
    t = _trend(points)
    return t if t is not None and t.start > 0 and (t.start - t.end) / t.start >= STILL_FALLING else None


def _acc_rising(points: Points) -> _Trend | None:
    """The recent trend of an accuracy if it rises by STILL_RISING or more, else None."""
    t = _trend(points)
    return t if t is not None and t.end - t.start >= STILL_RISING else None


def _loss_trend_line(label: str, t: _Trend) -> str:
    change = (t.end - t.start) / t.start if t.start else 0.0
    moved = f"{'fell' if change < 0 else 'rose'} {100 * abs(change):.1f}%" if round(100 * change, 1) else "stayed flat"
    return f"{label} {moved} over {t.span()} (fitted line {_loss(t.start)} to {_loss(t.end)})"


def _acc_trend_line(label: str, t: _Trend) -> str:
    change = t.end - t.start
    moved = (f"{'rose' if change > 0 else 'fell'} {100 * abs(change):.1f} points" if round(100 * change, 1)
             else "stayed flat")
    return f"{label} {moved} over {t.span()} (fitted line {_pct(t.start)} to {_pct(t.end)})"


# --- advice that knows what the run had on ---------------------------------------------------------------------------
def _longer(s: _Setup) -> str:
    """Train longer, in the units the run was limited by (epochs, or a --time budget)."""
    if s.time_budget:
        return (f"Give it more time than --time {s.time_budget} (a longer budget plans more epochs), or make each "
                "epoch cheaper (a smaller --img-size).")
    return f"Train for more epochs (e.g. --epochs {max(2 * s.epochs, 10)})."


def _from_pretrained(s: _Setup, why: str) -> list[str]:
    """Start from learned weights, unless the run already did."""
    if s.pretrained or s.weights:
        return []
    start = "If it trained from scratch, start" if s.pretrained is None else "Start"
    return [f"{start} from pretrained weights: --model efficientnet_lite0 --pretrained (ImageNet weights installed "
            f"with cnnlab, no network needed), or --weights FILE from a run on similar images; {why}"]


def _larger_model(s: _Setup) -> str:
    pretrained = "" if s.pretrained or s.weights else " or a pretrained one (--model efficientnet_lite0 --pretrained)"
    return f"Try a larger model (--model; `cnnlab models` lists them){pretrained}."


def _regularise(s: _Setup) -> list[str]:
    """Dropout and augmentation, each only if the run did not have it on (or had it weaker)."""
    return _more_dropout(s) + _augmentation(s)


def _more_dropout(s: _Setup) -> list[str]:
    if s.dropout is None:
        return [f"Add or raise dropout (--dropout {STRONG_DROPOUT:g}) so the network cannot memorise single images."]
    if s.dropout < STRONG_DROPOUT:
        return [f"Raise dropout (--dropout {STRONG_DROPOUT:g}; this run had {s.dropout:g}) so the network cannot "
                "memorise single images."]
    return []


def _augmentation(s: _Setup) -> list[str]:
    if s.augment is None:
        return ["Use data augmentation (--augment default) if the run had it off, so each epoch sees new variants "
                "of every image."]
    if s.augment == "none":
        return ["Turn data augmentation on (--augment default; this run had --augment none) so each epoch sees new "
                "variants of every image."]
    return []


def _early_stopping(s: _Setup) -> list[str]:
    if s.patience is not None:
        return []
    return [f"Stop stalled runs early next time with --patience {PLATEAU_EPOCHS}."]


def _lighter(s: _Setup) -> list[str]:
    """For a network that cannot fit its training images: the regularisers it had on make that harder."""
    if s.dropout is None or s.augment is None:
        return ["If dropout or augmentation are strong, compare with a run without them (--dropout 0, --augment "
                "none): they make the training images harder to fit."]
    had = ([f"dropout {s.dropout:g}"] if s.dropout > 0 else []) + (["augmentation"] if s.augment != "none" else [])
    off = (["--dropout 0"] if s.dropout > 0 else []) + (["--augment none"] if s.augment != "none" else [])
    if not had:
        return []
    return [f"This run had {' and '.join(had)}, which make the training images harder to fit: a run with "
            f"{' and '.join(off)} shows whether they hold it back."]


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
            "Lower the learning rate 3-10x (--lr), or let the LR finder pick one (--lr auto).",
            "Keep a warm-up (--schedule onecycle or cosine) so the first steps take small steps.",
            "If the loss turned NaN with fp16 precision, use --precision bf16 or fp32 instead.",
        ])
    return _Finding(DIVERGING, "Training diverged, and not because of a high learning rate at that point.", evidence, [
        "Check the data: `cnnlab data check DATA_DIR` finds unreadable, blank and mislabelled images.",
        "Use --precision fp32 if the loss turned NaN or inf in reduced precision.",
        "Lower the learning rate (--lr, or --lr auto) if the loss went up early in the run.",
    ])


# --- 2. validation: missing or too small --------------------------------------------------------------------------
def _interval_line(epoch: int, acc: float, n: int, interval: tuple[float, float]) -> str:
    low, high = interval
    return (f"validation accuracy {_pct(acc)} at epoch {epoch} on {n} images: 95% interval "
            f"{_pct(low)}-{_pct(high)} ({100 * (high - low):.1f} points wide)")


def _accuracy_interval(acc: float, n: int) -> tuple[float, float]:
    """Wilson interval of an accuracy measured on n images (acc * n of them right)."""
    return wilson_interval(min(n, max(0, round(acc * n))), n)


def _val_interval(c: _Curves, best: int | None,
                  val_size: int | None) -> tuple[tuple[float, float] | None, str, float | None]:
    """Wilson interval of validation accuracy at the best epoch (else the last), its evidence line, the accuracy."""
    accuracies = c.points("val_acc")
    if val_size is None or not accuracies:
        return None, "", None
    epoch, acc = next(((e, v) for e, v in accuracies if e == best), accuracies[-1])
    n = max(0, int(val_size))
    interval = _accuracy_interval(acc, n)
    return interval, _interval_line(epoch, acc, n, interval), acc


def _check_validation(c: _Curves, interval: tuple[float, float] | None, line: str, accuracy: float | None,
                      val_size: int | None) -> _Finding | None:
    """No validation metrics at all, or too few validation images for the accuracy to mean much."""
    advice_split = "Hold out more validation images (a larger --val-fraction, or a bigger val/ folder)."
    if not c.epochs:
        return None  # nothing recorded at all: the too-short rule says so
    if not c.points("val_loss") and not c.points("val_acc"):
        return _Finding(TOO_FEW_VAL, "No validation metrics were recorded, so the fit cannot be judged.",
                        ["no epoch has val_loss or val_acc"],
                        ["Train with a validation split (--val-fraction, or a val/ folder)."])
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
def _check_too_short(c: _Curves, s: _Setup) -> _Finding | None:
    """Fewer than MIN_EPOCHS epochs: no trend can be read, and more epochs is the remedy either way."""
    n = len(c.epochs)
    if n >= MIN_EPOCHS:
        return None
    longer = (_longer(s) if s.time_budget else
              "Train for more epochs (--epochs 10 or more) so the learning curves show a trend.")
    return _Finding(TOO_SHORT, f"Too short to tell: {n} epoch{'s' if n != 1 else ''} recorded; "
                                  "train for more epochs.",
                    [f"{n} epoch{'s' if n != 1 else ''} recorded; reading a trend needs at least {MIN_EPOCHS}"],
                    [longer])


# --- 5. no better than always answering one class -------------------------------------------------------------------
def _guess_rate(val_counts: dict[str, int] | None, num_classes: int | None) -> tuple[float, str, bool] | None:
    """(accuracy of always answering the largest validation class, that answer in words, whether the classes are
    unbalanced); from the counts, else 1/num_classes; None when neither is known."""
    total = sum(val_counts.values()) if val_counts else 0
    if total > 0:
        name = max(val_counts, key=lambda k: val_counts[k])  # the first of equally large classes
        rate, k = val_counts[name] / total, len(val_counts)
        if len(set(val_counts.values())) == 1:
            return rate, f"guessing (1 in {k} for {k} equally large classes)", False
        return (rate, f"always answering the largest class, {name!r} ({val_counts[name]} of {total} validation "
                      "images)", rate >= UNBALANCED / k)
    if num_classes is not None and num_classes >= 2:
        return 1 / num_classes, f"guessing (1 in {num_classes} classes)", False
    return None


def _check_no_better(c: _Curves, val_size: int | None, val_counts: dict[str, int] | None,
                     num_classes: int | None, s: _Setup) -> _Finding | None:
    """The 95% interval of the best validation accuracy reaches the rate of always answering the largest class."""
    guess = _guess_rate(val_counts, num_classes)
    accuracies = c.points("val_acc")
    if guess is None or val_size is None or not accuracies:
        return None
    rate, answer, unbalanced = guess
    epoch, acc = max(accuracies, key=lambda p: p[1])  # its best epoch: the most favourable reading
    n = max(0, int(val_size))
    low, high = _accuracy_interval(acc, n)
    if low > rate:
        return None
    verdict = ("inside that interval, so the network is no better" if high >= rate else
               "above that interval, so the network does worse than that")
    evidence = [_interval_line(epoch, acc, n, (low, high)), f"{answer} scores {_pct(rate)}: {verdict}"]
    if unbalanced:
        evidence.append("the classes are unbalanced: accuracy alone cannot show whether the smaller classes were "
                        "learned; the report's per-class recall can")
    train_loss, train_acc = c.points("train_loss"), c.points("train_acc")
    k = len(val_counts) if val_counts else num_classes
    at_chance = bool(train_loss and k and k >= 2 and train_loss[-1][1] >= CHANCE_LOSS * math.log(k))
    if at_chance:
        evidence.append(f"training loss {_loss(train_loss[-1][1])} at epoch {train_loss[-1][0]} is still near chance "
                        f"level ln({k}) = {_loss(math.log(k))}: it has hardly learned its training images either")
    memorised = bool(train_acc and train_acc[-1][1] >= UNDERFIT_TRAIN_ACC)
    if memorised:
        evidence.append(f"training accuracy {_pct(train_acc[-1][1])} at epoch {train_acc[-1][0]}: it fits its "
                        "training images, but what it learned does not carry over")
    advice = _from_pretrained(s, "features learned on a million images need only a few examples per class to "
                                 "tell classes apart.")
    advice.append("Collect more training images per class: a network trained from scratch needs hundreds per "
                  "class or more to find what tells them apart.")
    # a network that fits its training images will not learn more from more epochs; one that does not might
    advice += _augmentation(s) if memorised else [_longer(s)]
    if s.img_size is not None and s.img_size > SMALL_IMG_SIZE:
        advice.append(f"Try smaller images (--img-size {max(SMALL_IMG_SIZE, s.img_size // 2)}; this run had "
                      f"{s.img_size}): fewer pixels leave less detail to memorise, and each epoch is cheaper, so "
                      "more of them fit.")
    if at_chance:
        advice.append("Check that the labels match the images (`cnnlab data check DATA_DIR`), and try another "
                      "learning rate (--lr auto).")
    compared = "cannot be told apart from" if high >= rate else "is below"
    return _Finding(NO_BETTER, f"No better than chance: the best validation accuracy, {_pct(acc)}, {compared} the "
                               f"{_pct(rate)} of {answer.split(' (')[0]}; the network has learned (almost) nothing "
                               "that carries over to new images.", evidence, advice)


# --- 6. overfitting ----------------------------------------------------------------------------------------------
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


def _wide_gap(c: _Curves) -> bool:
    gap = _final_gap(c)
    return gap is not None and gap[1] - gap[2] >= OVERFIT_GAP


def _check_overfitting(c: _Curves, best: int | None, s: _Setup) -> _Finding | None:
    """Val loss rose well above its best and stayed there while train loss kept falling."""
    rise = _val_rise(c)
    if not _rose(rise):
        return None
    best_epoch, best_loss, _ = rise
    last_epoch, last_loss = c.points("val_loss")[-1]
    train_then, train_now = c.at("train_loss", best_epoch), c.at("train_loss", last_epoch)
    if train_then is None or train_now is None or train_now > train_then * (1 - TRAIN_FALL):
        return None  # validation got worse without the training images getting better: not memorising
    evidence = [f"validation loss was lowest at epoch {best_epoch} ({_loss(best_loss)}) and rose to "
                f"{_loss(last_loss)} by epoch {last_epoch} while training loss kept falling from "
                f"{_loss(train_then)} to {_loss(train_now)}"]
    gap = _final_gap(c)
    if gap is not None:
        evidence.append(_gap_line(gap))
    advice = []
    if best is not None and best != c.epochs[-1]:
        stop = (f"; --patience {PLATEAU_EPOCHS} stops a run there next time" if s.patience is None else "")
        advice.append(f"Use the weights from epoch {best} (best.safetensors), not the last epoch's{stop}.")
    advice += _regularise(s)
    advice.append("Collect more training images: the most reliable cure; a larger --weight-decay also helps.")
    return _Finding(OVERFITTING, f"The network is overfitting: after epoch {best} it kept getting better on the "
                                 "training images but worse on the validation images.", evidence, advice)


# --- 7. good fit ---------------------------------------------------------------------------------------------------
def _check_good_fit(c: _Curves, best: int | None, s: _Setup) -> _Finding | None:
    """High validation accuracy, close to training accuracy, validation loss at or near its minimum at the end."""
    val_acc = c.points("val_acc")
    if not val_acc or val_acc[-1][1] < GOOD_VAL_ACC or _wide_gap(c):
        return None
    rise = _val_rise(c)
    if _rose(rise):
        return None
    gap = _final_gap(c)
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
    falling = _loss_falling(c.points("val_loss"))
    if falling is not None:
        fall = (falling.start - falling.end) / falling.start
        advice.append(f"Validation loss was still falling at the end ({100 * fall:.1f}% over {falling.span()}): "
                      f"more training may gain a little more. {_longer(s)}")
    advice.append("Confirm on images the network has never seen (`cnnlab eval RUN --split test`) before "
                  "trusting it.")
    return _Finding(GOOD_FIT, f"The network looks well trained: {_pct(acc)} validation accuracy, close to "
                              "training accuracy, with validation loss at or near its best.", evidence, advice)


# --- 8. underfitting -----------------------------------------------------------------------------------------------
def _check_underfitting(c: _Curves, num_classes: int | None, s: _Setup) -> _Finding | None:
    """Train accuracy low and its loss still falling, or train and val loss close together and both high."""
    train_acc, train_loss, val_loss = c.points("train_acc"), c.points("train_loss"), c.points("val_loss")
    advice = [_longer(s), _larger_model(s)] + _lighter(s)
    falling = _loss_falling(train_loss)
    if train_acc and train_acc[-1][1] < UNDERFIT_TRAIN_ACC and falling is not None:
        epoch, acc = train_acc[-1]
        return _Finding(UNDERFITTING, f"The network is underfitting: it has not learned the training images yet "
                                      f"({_pct(acc)} training accuracy) and was still improving.", [
            f"training accuracy only {_pct(acc)} at epoch {epoch}",
            f"training loss still falling: {_loss_trend_line('it', falling)}",
        ], advice)
    if not train_loss or not val_loss:
        return None
    t, v = train_loss[-1][1], val_loss[-1][1]
    if abs(v - t) > LOSS_CLOSE * max(t, v):
        return None
    evidence = [f"training loss {_loss(t)} and validation loss {_loss(v)} are close: no generalisation gap"]
    if num_classes is not None and num_classes >= 2:
        chance = math.log(num_classes)
        if min(t, v) < HIGH_LOSS_OF_CHANCE * chance:
            return None
        evidence.append(f"both are high: chance level for {num_classes} classes is ln({num_classes}) = "
                        f"{_loss(chance)}, and training loss is {100 * t / chance:.0f}% of it")
        if t >= CHANCE_LOSS * chance:
            advice.insert(0, "The loss is at chance level: check that the labels match the images (`cnnlab data "
                             "check DATA_DIR`), and try another learning rate (--lr auto).")
    elif not train_acc or train_acc[-1][1] >= UNDERFIT_TRAIN_ACC:
        return None
    else:
        evidence.append(f"training accuracy only {_pct(train_acc[-1][1])}")
    return _Finding(UNDERFITTING, "The network is underfitting: training and validation loss are both high, "
                                  "so it is too weak or too briefly trained for the task.", evidence, advice)


# --- 9. plateau ----------------------------------------------------------------------------------------------------
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


def _plateau_advice(c: _Curves, s: _Setup, evidence: list[str]) -> list[str]:
    """Decay the learning rate (named as the cause when it never decayed), a larger model, early stopping."""
    advice = ["Lower the learning rate 10x (--lr) or use a schedule that decays it (--schedule cosine or onecycle)."]
    lrs = [v for _, v in c.points("lr")]
    if len(lrs) >= 2 and lrs[0] == lrs[-1]:
        evidence.append(f"learning rate stayed at {lrs[-1]:.3g} for the whole run")
        advice[0] = ("The learning rate never decayed: use --schedule cosine or onecycle, or lower the learning "
                     "rate 10x (--lr).")
    return advice + [_larger_model(s)] + _early_stopping(s)


def _check_plateau(c: _Curves, s: _Setup) -> _Finding | None:
    """Neither validation loss nor validation accuracy improved for PLATEAU_EPOCHS epochs."""
    val_loss, val_acc = c.points("val_loss"), c.points("val_acc")
    marks = [m for m in (_last_improvement(val_loss, False), _last_improvement(val_acc, True)) if m is not None]
    if not marks:
        return None
    since = max(marks)
    stalled = c.epochs[-1] - since
    if stalled < PLATEAU_EPOCHS:
        return None
    evidence = [f"no validation improvement since epoch {since}: {stalled} epochs without progress"]
    if val_loss:
        evidence.append(f"validation loss {_loss(c.at('val_loss', since) or val_loss[-1][1])} at epoch {since}, "
                        f"{_loss(val_loss[-1][1])} at epoch {val_loss[-1][0]}")
    if val_acc:
        evidence.append(f"best validation accuracy {_pct(max(v for _, v in val_acc))}")
    advice = _plateau_advice(c, s, evidence)
    return _Finding(PLATEAU, f"Training has stalled: validation results have not improved for {stalled} epochs.",
                    evidence, advice)


# --- 10. still improving ------------------------------------------------------------------------------------------
def _check_still_improving(c: _Curves, s: _Setup) -> _Finding | None:
    """Not good yet, but the recent trend of validation loss or accuracy, or of training loss, still improves."""
    val_loss, val_acc = _loss_falling(c.points("val_loss")), _acc_rising(c.points("val_acc"))
    train_loss = _loss_falling(c.points("train_loss"))
    if val_loss is None and val_acc is None and train_loss is None:
        return None
    evidence = []
    accuracies = c.points("val_acc")
    if accuracies:
        short = f", below the {_pct(GOOD_VAL_ACC)} of a good fit" if accuracies[-1][1] < GOOD_VAL_ACC else ""
        evidence.append(f"validation accuracy {_pct(accuracies[-1][1])} at epoch {accuracies[-1][0]}{short}")
    if val_loss is not None:
        evidence.append(f"validation loss still falling: {_loss_trend_line('it', val_loss)}")
    if val_acc is not None:
        evidence.append(f"validation accuracy still rising: {_acc_trend_line('it', val_acc)}")
    if val_loss is None and val_acc is None:
        evidence.append(f"training loss still falling: {_loss_trend_line('it', train_loss)}; validation results "
                        "have not improved over those epochs")
    gap = _final_gap(c)
    if gap is not None:
        evidence.append(_gap_line(gap))
    advice = [_longer(s)]
    if _wide_gap(c):
        advice += [f"Training accuracy runs {100 * (gap[1] - gap[2]):.0f} points ahead of validation accuracy: "
                   "watch whether validation loss turns up, and regularise if it does."] + _regularise(s)
    else:
        advice.append(_larger_model(s))
    return _Finding(STILL_IMPROVING, "The network is not good yet, but its recent epochs still make progress: "
                                     "train longer.", evidence, advice)


# --- 11. anything else: the recent trends are flat --------------------------------------------------------------------
def _levelled_off(c: _Curves, s: _Setup) -> _Finding:
    """Nothing improves over the recent epochs, even if the last new best is fewer than PLATEAU_EPOCHS ago."""
    evidence = []
    for label, name in (("validation loss", "val_loss"), ("training loss", "train_loss")):
        t = _trend(c.points(name))
        if t is not None:
            evidence.append(_loss_trend_line(label, t))
    t = _trend(c.points("val_acc"))
    if t is not None:
        evidence.append(_acc_trend_line("validation accuracy", t))
    n = min(TREND_WINDOW, len(c.epochs))
    evidence.insert(0, f"over the last {n} epochs no trend improves by more than {100 * STILL_FALLING:.0f}% "
                       f"(losses) or {100 * STILL_RISING:.0f} points (accuracy)")
    advice = _plateau_advice(c, s, evidence)
    return _Finding(PLATEAU, f"Training has levelled off: over the last {n} epochs neither the validation results "
                             "nor the training loss improved clearly.", evidence, advice)
