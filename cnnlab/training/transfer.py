"""Transfer from pretrained weights in two phases: the classifier alone on features computed once, then fine-tuning.

A pretrained backbone with a fresh classifier is a good network behind a random one: the first fine-tuning steps
send the random classifier's large gradients into the backbone and wear down the features it came for (Kumar et
al. 2022, "fine-tuning can distort pretrained features": linear probe, then fine-tune). So the classifier is
trained first, alone, and on a CPU that phase costs seconds instead of epochs:

    encode   each training image's features (what the classifier receives: the backbone's globally pooled maps,
             (N, D)) under `views` views, each computed ONCE with the backbone frozen in eval mode (its BatchNorm
             statistics are used, never updated): view 0 is the evaluation view (resize, centre crop), views
             1.. the run's training augmentation (random crop on the workers, flip/rotation/colour on the device,
             each view's seeds from (seed, view))                    views x train images forward passes
    fit      the classifier (the model's own, e.g. nn.Linear(1280, K)) on those cached (M, D) features with
             AdamW for HEAD_EPOCHS passes over them: a few thousand tiny matrix products   ~1 s
    then     fine-tuning of the whole network (cnnlab.training.loop) starts from a classifier that already fits,
             with a lower learning rate for the backbone (optim.parameter_groups) and BatchNorm held in eval mode
             (hold_batchnorm below), for whatever --epochs or --time leaves

With --time the phase's views are planned like the rest of the budget (cnnlab.training.budget.head_views): view 0
always, augmented views while they fit in HEAD_SHARE of the time left, measured from view 0's own speed.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.dataset import ImageDataset, collate_skip_bad
from cnnlab.signals import leave_signals_to_parent
from cnnlab.training.forward import InputPipeline

# The classifier's fit on cached features. A pass over ~10,000 vectors of 1280 numbers costs milliseconds, so
# enough passes to converge cost nothing next to the encoding.
HEAD_EPOCHS = 30  # passes over the cached features (a logistic regression converges well within them) ...
HEAD_MIN_STEPS = 300  # ... and at least this many steps: a small folder's pass is one or two steps
HEAD_BATCH = 256  # feature vectors per step: ~40 steps a pass for 3,000 images x 3 views
HEAD_LR = 1e-3  # AdamW's default step: the classifier starts at zero weights, features are O(1) (post-ReLU6, BN)
HEAD_WEIGHT_DECAY = 1e-2  # mild: many views of every image already regularise a linear model
FIT_STEP_SECONDS = 0.003  # one AdamW step of the fit on 256 vectors (measured: 1,080 steps in 3.5 s on a loaded core)
_VIEW_STREAM = 0x48EAD  # keeps the views' augmentation seeds apart from the training epochs' (EpochSampler)


def classifier_inputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What `model.classifier()` receives for a batch (N, 3, S, S), in eval mode without gradients: (N, D), the
    globally pooled features (dropout is the identity in eval mode). Read with a hook, so every registered model
    works through the registry's `classifier()` seam, whatever its pooling."""
    captured = []
    hook = model.classifier().register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        hook.remove()
    return captured[0].float()


def view_seeds(seed: int, view: int, size: int) -> torch.Tensor:
    """The augmentation seed of each of `size` images in augmented view `view` (>= 1): a pure function of
    (seed, view), as the training epochs' seeds are of (seed, epoch)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + view) * 7919 + _VIEW_STREAM)
    return torch.randint(0, 2**62, (size,), generator=generator)


class Views(Dataset):
    """Training images under the phase's views: key (index, seed, view) -> view 0 the evaluation transform,
    others the training transform seeded with `seed` (the device part of the augmentation follows the same seed)."""

    def __init__(self, train: ImageDataset, evaluation: ImageDataset):
        self.train = train
        self.evaluation = evaluation

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, key: tuple[int, int, int]):
        index, seed, view = key
        return self.evaluation[index] if view == 0 else self.train[(index, seed)]


def evaluation_view(train: ImageDataset, transform) -> ImageDataset:
    """The training images read like validation images (`transform`: the run's eval transform), same source."""
    return ImageDataset(train.samples, transform, train.resolution, max_pixels=train.max_pixels, source=train.source,
                        warn=False)


@dataclass
class CachedFeatures:
    """The classifier's inputs of every readable training image under every view, computed once."""

    features: torch.Tensor
    """(M, D) float32: M = readable images x views."""
    labels: torch.Tensor
    """(M,) class of each row."""
    images: torch.Tensor
    """(M,) index of each row's image in the training dataset."""
    views: torch.Tensor
    """(M,) view of each row (0: the evaluation view)."""
    seconds: list[float]
    """Wall time each view took to encode."""


def view_batches(size: int, view: int, seed: int, batch_size: int) -> list[list[tuple[int, int, int]]]:
    """The keys of one view's batches, images in file order."""
    seeds = view_seeds(seed, view, size).tolist() if view else [0] * size
    keys = [(index, seeds[index], view) for index in range(size)]
    return [keys[start:start + batch_size] for start in range(0, size, batch_size)]


def encode_view(model: nn.Module, views: Views, view: int, pipeline: InputPipeline, seed: int, batch_size: int,
                workers: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (n, D), labels (n,), image indices (n,)) of every readable training image under `view`."""
    loader = DataLoader(views, batch_sampler=view_batches(len(views), view, seed, batch_size), num_workers=workers,
                        collate_fn=collate_skip_bad, worker_init_fn=leave_signals_to_parent if workers > 0 else None)
    features, labels, indices = [], [], []
    for batch in loader:
        if len(batch) == 0:
            continue
        images = pipeline(batch.images, batch.seeds, train=view > 0)  # (N, 3, S, S) normalised, augmented if view
        with pipeline.precision.autocast(pipeline.device):
            features.append(classifier_inputs(model, images).cpu())    # (N, D)
        labels.append(batch.labels)
        indices.append(batch.indices)
    if not features:
        empty = torch.empty(0, dtype=torch.long)
        return torch.empty(0, 0), empty, empty
    return torch.cat(features), torch.cat(labels), torch.cat(indices)


def encode(model: nn.Module, views: Views, pipeline: InputPipeline, seed: int, batch_size: int, workers: int,
           more_views) -> CachedFeatures:
    """Encode view 0, then augmented views while `more_views(done, seconds_per_view)` says another one fits.
    The model is in eval mode throughout: its BatchNorm statistics are read, never updated."""
    was_training = model.training
    model.eval()
    parts, seconds, view = [], [], 0
    try:
        while view == 0 or more_views(view, sum(seconds) / len(seconds)):
            began = time.monotonic()
            features, labels, indices = encode_view(model, views, view, pipeline, seed, batch_size, workers)
            parts.append((features, labels, indices, torch.full_like(labels, view)))
            seconds.append(time.monotonic() - began)
            view += 1
    finally:
        model.train(was_training)
    return CachedFeatures(*(torch.cat([part[k] for part in parts]) for k in range(4)), seconds=seconds)


def fit_classifier(classifier: nn.Module, features: torch.Tensor, labels: torch.Tensor, *, seed: int,
                   label_smoothing: float = 0.0, class_weight: torch.Tensor | None = None,
                   epochs: int = HEAD_EPOCHS, batch_size: int = HEAD_BATCH, lr: float = HEAD_LR,
                   weight_decay: float = HEAD_WEIGHT_DECAY) -> float:
    """Train `classifier` ((M, D) -> (M, K)) on cached `features` (M, D) and `labels` (M,): AdamW, `epochs` shuffled
    passes (at least HEAD_MIN_STEPS steps; the order from `seed` alone), the learning rate decayed to 0 along a cosine; the loss is the run's
    cross-entropy (label smoothing, class weights). Starts from zero weights (a fresh classifier's random weights
    would only add noise to a convex problem). Returns the last pass's mean loss."""
    parameters = [p for p in classifier.parameters()]
    device = parameters[0].device
    with torch.no_grad():
        for parameter in parameters:
            parameter.zero_()
    decay = [p for p in parameters if p.ndim > 1]  # weights decay, biases do not (as optim.parameter_groups)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(features) / batch_size)
    epochs = head_epochs(len(features), epochs, batch_size)
    total = max(epochs * steps_per_epoch, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(seed)
    weight = class_weight.to(device) if class_weight is not None else None
    features, labels = features.to(device), labels.to(device)
    mean_loss = float("nan")
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(device)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(classifier(features[rows]), labels[rows], weight=weight,
                                               label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(rows)
        mean_loss = total_loss / max(len(features), 1)
    return mean_loss


def head_epochs(rows: int, epochs: int = HEAD_EPOCHS, batch_size: int = HEAD_BATCH) -> int:
    """Passes fit_classifier makes over `rows` vectors: `epochs`, more when they would be fewer than HEAD_MIN_STEPS."""
    return max(epochs, math.ceil(HEAD_MIN_STEPS / max(math.ceil(rows / batch_size), 1)))


def fit_seconds(rows: int) -> float:
    """What fit_classifier takes on `rows` cached feature vectors (the planner's estimate)."""
    return head_epochs(rows) * math.ceil(rows / HEAD_BATCH) * FIT_STEP_SECONDS


def encode_seconds_per_image(model: nn.Module, loader, pipeline: InputPipeline, batches: int) -> float:
    """Seconds per image of the phase's encoding (an eval forward pass to the classifier's input) over the first
    `batches` batches of `loader` after one untimed batch: what `cnnlab plan` predicts the phase from."""
    was_training = model.training
    model.eval()
    timed, images, iterator = 0.0, 0, iter(loader)
    try:
        for k in range(batches + 1):
            began = time.perf_counter()  # reading the batch included, as the phase reads it
            batch = next(iterator, None)
            if batch is None:
                break
            with pipeline.precision.autocast(pipeline.device):
                classifier_inputs(model, pipeline(batch.images))
            if k:  # the first batch pays for starting the workers and first-call allocations
                timed, images = timed + time.perf_counter() - began, images + len(batch)
    finally:
        model.train(was_training)
    return timed / max(images, 1)


@dataclass
class HeadPhase:
    """What the classifier phase did: the views encoded, their time, the fit's loss and accuracy on its features."""

    views: int
    images: int
    encode_seconds: float
    fit_seconds: float
    train_loss: float
    train_accuracy: float
    """On the cached features it was fit to (all views)."""

    def describe(self) -> str:
        """One line for the log."""
        return (f"classifier phase: features of {self.images} training images x {self.views} view"
                f"{'s' if self.views != 1 else ''} computed once ({self.encode_seconds:.1f}s), classifier fit on them "
                f"in {self.fit_seconds:.1f}s: train_loss {self.train_loss:.4f} train_acc {self.train_accuracy:.3f}")


def train_classifier_first(model: nn.Module, train: ImageDataset, eval_transform, pipeline: InputPipeline, *,
                           seed: int, batch_size: int, workers: int, more_views, label_smoothing: float = 0.0,
                           class_weight: torch.Tensor | None = None, verbose: bool = True) -> HeadPhase:
    """The classifier phase on `model` (its classifier fitted in place, the rest untouched): encode the training
    images under the views `more_views` allows (see `encode`), then fit_classifier on the cached features."""
    began = time.monotonic()
    cached = encode(model, Views(train, evaluation_view(train, eval_transform)), pipeline, seed, batch_size, workers,
                    more_views)
    encoded = time.monotonic()
    classifier = model.classifier()
    loss = fit_classifier(classifier, cached.features.to(pipeline.device), cached.labels, seed=seed,
                          label_smoothing=label_smoothing, class_weight=class_weight)
    with torch.no_grad():
        predicted = classifier(cached.features.to(pipeline.device)).argmax(1).cpu()
    phase = HeadPhase(int(cached.views.max()) + 1 if len(cached.views) else 0, int(cached.images.unique().numel()),
                      encoded - began, time.monotonic() - encoded, loss,
                      float((predicted == cached.labels).float().mean()) if len(cached.labels) else float("nan"))
    if verbose:
        print(phase.describe(), file=sys.stderr, flush=True)
    return phase


def hold_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers in eval mode (after model.train()): they normalise with the statistics the weights came
    with and leave them unchanged, while their scale and shift still train. Batches of 32 augmented crops of one
    folder are a noisy, shifted sample next to the statistics ImageNet gave (reasoning, not yet measured apart)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
