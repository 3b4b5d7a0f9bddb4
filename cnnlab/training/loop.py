"""The training loop: train_step, train_one_epoch, validate, and train(run) over the epochs.

At the end of every epoch, train() writes the run's weights (best/last), metrics.csv, the learning
curves and RUN/checkpoint.safetensors (cnnlab.training.state), from which a resumed run continues bit
for bit; SIGINT/SIGTERM stop it after the current step with a checkpoint (cnnlab.signals).
Unreadable images are skipped and counted (cnnlab.data.unreadable). The loop only touches the model,
the loaders (samplers with set_epoch), the optimizer and the scheduler, so it runs unchanged in each
process of a torchrun/DDP job once the model is wrapped and the samplers sharded.
"""

from __future__ import annotations

import dataclasses
import signal
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from cnnlab import plots
from cnnlab.data.loaders import samples_per_epoch, skip_sampler
from cnnlab.errors import CnnlabError
from cnnlab.files import write_yaml
from cnnlab.models.weights import save_weights
from cnnlab.training.forward import Logits, view_logits
from cnnlab.training.budget import CHECK_AFTER_EPOCH, corrected_speed, epoch_seconds, plan, replan_needed
from cnnlab.training.ema import decay_for
from cnnlab.training.optim import epoch_sizes, set_schedule_length
from cnnlab.training.progress import Progress
from cnnlab.training.record import BEST, CHECKPOINT, CONFIG, CURVES, LAST, write_metrics
from cnnlab.training.tracking import log_epoch
from cnnlab.training import distributed
from cnnlab.training.distributed import SINGLE, World
from cnnlab.training.setup import Run, TrainingParts
from cnnlab.signals import StopOnSignal, TrainingInterrupted
from cnnlab.training.state import LoopState, capture_rng, save_training_checkpoint
from cnnlab.training.transfer import hold_batchnorm

# Stop when this many steps in a row had a non-finite loss: the run has diverged, and skipping on
# would only hide it.
MAX_NONFINITE_STEPS = 10


def loss_normaliser(loss_fn: nn.Module, labels: torch.Tensor, soft: bool) -> float:
    """What the batch's summed loss is divided by to give cross-entropy's mean: the images, or with class
    weights (and hard labels) the sum of their weights, as nn.CrossEntropyLoss does."""
    if loss_fn.weight is None or soft:
        return float(len(labels))
    return float(loss_fn.weight.cpu()[labels].sum())


def train_step(parts: TrainingParts, inputs: tuple | torch.Tensor, labels: torch.Tensor, state: LoopState,
               targets: torch.Tensor | None = None, normaliser: float | None = None,
               world: World = SINGLE) -> float | None:
    """One optimisation step on a batch already on the device, `inputs` the net's arguments (images (N, 3, H, W),
    or bags of tiles and their counts: TrainingParts.step_inputs), with class labels (N,) and,
    when MixUp/CutMix blended the images, soft targets (N, K); returns the loss, or None for a skipped step.

    The loss is the batch's summed cross-entropy over `normaliser`, the normaliser of the whole global batch
    (all processes; loss_normaliser): times the number of processes, whose gradients DDP averages, it is the
    mean over the global batch, exactly as one process with the whole batch computes it.
    A non-finite loss never reaches backward() or the optimizer, and the BatchNorm statistics its
    forward pass updated are put back: the step changes nothing but the schedule and the counts.
    """
    labels = labels.to(parts.device, non_blocking=True)
    fn = parts.loss_fn
    if normaliser is None:
        normaliser = loss_normaliser(fn, labels, targets is not None)
    buffers = [buffer.detach().clone() for buffer in parts.model.buffers()]  # BN running stats (small)
    with parts.precision.autocast(parts.device):
        logits = parts.net(*inputs) if isinstance(inputs, tuple) else parts.net(inputs)  # (N, K)
        # loss in fp32 for a stable log-softmax
        per_image = nn.functional.cross_entropy(logits.float(), labels if targets is None else targets,
                                                weight=fn.weight, label_smoothing=fn.label_smoothing, reduction="none")
        loss = per_image.sum() * world.world_size / normaliser
    sums = state.epoch_sums
    sums.lr = parts.optimizer.param_groups[0]["lr"]
    parts.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    finite = bool(torch.isfinite(loss))
    if world.distributed:  # every process skips the step, or none does (DDP needs all in every backward)
        finite = distributed.all_sum([0.0 if finite else 1.0], parts.device)[0] == 0
    if not finite:
        with torch.no_grad():
            for buffer, saved in zip(parts.model.buffers(), buffers):
                buffer.copy_(saved)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            parts.scheduler.step()  # the schedule stays aligned with the batches
        sums.skipped_steps += 1
        state.skipped_steps += 1
        state.nonfinite_in_a_row += 1
        if state.nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
            raise CnnlabError(f"training stopped in epoch {state.epoch + 1}: the loss was not a finite number "
                              f"(nan or inf) for {MAX_NONFINITE_STEPS} steps in a row ({state.skipped_steps} "
                              "skipped in all; the weights were never updated from them). Lower the learning "
                              "rate (--lr), check the images with `cnnlab data check`, or use --precision fp32")
        return None
    state.nonfinite_in_a_row = 0
    parts.scaler.scale(loss).backward()
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    if parts.average is not None:
        parts.average.update(parts.model)
        state.ema_steps = parts.average.steps
    loss_value = per_image.sum().item() / max(len(labels), 1)  # this process's mean, for the progress bar
    sums.correct += (logits.argmax(1) == labels).sum().item()
    sums.images += len(labels)
    sums.loss_sum += loss_value * len(labels)
    return loss_value


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze everything but the classifier (weights and BatchNorm statistics), or unfreeze it all.

    Called after model.train(): frozen modules are put in eval mode so their BatchNorm statistics stay
    those of the pretrained weights (a linear probe on fixed features)."""
    head = set(model.classifier().parameters())
    head_modules = set(model.classifier().modules())
    for parameter in model.parameters():
        parameter.requires_grad_(not frozen or parameter in head)
    if frozen:
        for module in model.modules():
            if module not in head_modules and module is not model:
                module.eval()


def train_one_epoch(run: Run, epoch: int, stop: StopOnSignal | None = None) -> bool:
    """Train on epoch `epoch` from batch state.batches_done on; False if a stop signal came first."""
    parts, state, loader, config = run.parts, run.state, run.train_loader, run.config
    parts.net.train()
    if config.freeze:
        set_frozen(parts.model, epoch <= config.freeze)
    if config.freeze_bn:  # fine-tuning: BatchNorm keeps the starting weights' statistics (transfer.hold_batchnorm)
        hold_batchnorm(parts.model)
    side = epoch_sizes(config.epochs, config.img_size, parts.model.min_input_size, config.progressive)[epoch - 1]
    first = state.batches_done
    world = run.world
    run.unreadable.begin_pass("train", epoch, start_batch=first)
    with Progress(len(skip_sampler(loader)), f"epoch {epoch} train", enabled=run.verbose) as progress:
        for batch_number, batch in enumerate(loader, start=first):
            run.unreadable.record_batch("train", batch_number - first, batch.indices, epoch)
            soft = bool(config.mixup or config.cutmix)
            # One small collective per step decides for every process: stop (a signal reached one of them),
            # skip (one process's share was all unreadable), and the global batch's loss normaliser.
            stop_here, normaliser, empty = distributed.all_sum(
                [float(stop is not None and stop.signum is not None),
                 loss_normaliser(parts.loss_fn, batch.labels, soft) if len(batch) else 0.0,
                 float(len(batch) == 0)], parts.device) if world.distributed else \
                (float(stop is not None and stop.signum is not None), None, float(len(batch) == 0))
            if stop_here:
                if stop is not None and stop.signum is None:
                    stop.signum = signal.SIGTERM  # another process was signalled: stop as it does
                return False
            if not empty:
                # crops or tiles (N, 3, S, S) on the device, or bags of selected tiles (cnnlab.training.bags)
                inputs, targets = parts.step_inputs(batch, epoch, side)
                progress.update(len(batch), train_step(parts, inputs, batch.labels, state, targets, normaliser, world))
            state.batches_done = batch_number + 1
            if state.planned_steps and state.step >= state.planned_steps:
                break  # a --time plan can end in the middle of its last epoch
            over = run.budget is not None and run.budget.elapsed() > run.budget.seconds - run.budget.reserve()
            if world.distributed:  # rank 0's clock decides for all
                over = bool(distributed.broadcast(over))
            if over:
                state.budget_reached = True  # slower than planned: keep the time to validate and finish
                break
    if stop is not None and stop.signum is not None and not world.distributed:
        return False  # the signal came during the last step of the epoch
    return True


def validate(run: Run, epoch: int) -> Logits:
    """Logits of every readable validation image with the current weights."""
    run.unreadable.begin_pass("val", epoch)
    # scored the way prediction scores them (tiled runs: whole images by the sliding window)
    result = view_logits(run.parts.evaluated, run.val_loader, run.parts.pipeline, run.preprocessing,
                         f"epoch {epoch} val", show_progress=run.verbose)
    run.unreadable.record_pass("val", result.indices, epoch)
    if run.world.distributed:  # each process scored its share: every image once, put together in file order
        shares = [share for share in distributed.gather_objects((result.logits, result.labels, result.indices))
                  if len(share[2])]
        if shares:
            logits, labels, indices = (torch.cat([share[k] for share in shares]) for k in range(3))
            order = indices.argsort()
            result = Logits(logits[order], labels[order], indices[order])
    return result


def epoch_row(state: LoopState, epoch: int, val_loss: float, val_acc: float, seconds: float, lr: float,
              side: int, fraction: float = 1.0) -> dict:
    """One line of metrics.csv from the sums of the epoch just trained (`fraction`: the share of its batches)."""
    sums = state.epoch_sums
    seen = sums.images
    return {"epoch": epoch, "lr": sums.lr if sums.lr is not None else lr,
            "train_loss": sums.loss_sum / seen if seen else float("nan"),
            "train_acc": sums.correct / seen if seen else float("nan"),
            "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds, "skipped_steps": sums.skipped_steps,
            "side": side, "fraction": round(fraction, 4)}


def train(run: Run) -> LoopState:
    """The epoch loop, from wherever run.state says the run is, to config.epochs or an early stop."""
    with StopOnSignal() as stop:
        while run.state.epoch < run.config.epochs:  # a --time re-plan may change config.epochs on the way
            epoch = run.state.epoch + 1
            if run.state.budget_reached or run.budget is not None and \
                    run.budget.elapsed() >= run.budget.seconds - run.budget.reserve():
                run.state.budget_reached = True
                run.log(f"time budget reached after epoch {epoch - 1}: the run ends here")
                break
            began = time.monotonic()
            _train_epoch(run, epoch, stop)
            if run.budget is not None and not run.state.budget_replanned and \
                    epoch == min(CHECK_AFTER_EPOCH, run.config.epochs - 1):
                _check_plan(run, epoch, time.monotonic() - began)
            if run.state.stopped_early:
                run.log(f"early stop: no better validation loss for {run.config.patience} epochs")
                break
            signalled = stop.signum is not None
            if run.world.distributed:  # a signal to any process stops them all
                signalled = distributed.all_sum([float(signalled)], run.parts.device)[0] > 0
            if signalled and run.state.epoch < run.config.epochs:
                _stop_on_signal(run, stop.signum or signal.SIGTERM, save=False)
    return run.state


def _train_epoch(run: Run, epoch: int, stop: StopOnSignal) -> None:
    """Train and validate one epoch, record it and save its files."""
    state, parts, config = run.state, run.parts, run.config
    start = time.perf_counter()
    images_before = state.epoch_sums.images  # a resumed epoch: what was trained before the interruption
    skip_sampler(run.train_loader).set_epoch(epoch)
    if not train_one_epoch(run, epoch, stop):
        _stop_on_signal(run, stop.signum, save=True)
    fraction = min(1.0, state.batches_done / max(len(run.train_loader), 1))  # < 1: a --time plan ended mid-epoch
    trained_here = state.epoch_sums.images - images_before
    if run.world.distributed:  # every process's share of the epoch, summed; the same files left out next epoch
        sums = state.epoch_sums
        sums.loss_sum, sums.images, sums.correct = distributed.all_sum(
            [sums.loss_sum, float(sums.images), float(sums.correct)], parts.device)
        sums.images, sums.correct = int(sums.images), int(sums.correct)
        run.unreadable.merge(distributed.gather_objects(run.unreadable.found))
    val = validate(run, epoch)
    val_loss, val_acc = val.loss_and_accuracy()
    side = epoch_sizes(config.epochs, config.img_size, parts.model.min_input_size, config.progressive)[epoch - 1]
    row = epoch_row(state, epoch, val_loss, val_acc, time.perf_counter() - start,
                    parts.optimizer.param_groups[0]["lr"], side, fraction)
    if run.world.distributed:
        trained_here = int(distributed.all_sum([float(trained_here)], parts.device)[0])
    state.history.append(row)
    improved = val_loss < state.best_val_loss
    if improved:
        state.best_epoch, state.best_val_loss, state.best_val_acc = epoch, val_loss, val_acc
        state.epochs_without_improvement = 0
        run.best_val = val
    else:
        state.epochs_without_improvement += 1
    state.stopped_early = bool(config.patience and state.epochs_without_improvement >= config.patience)
    state.epoch = epoch
    state.start_epoch()
    _save_epoch(run, improved)
    partial = f" (partial: {fraction:.0%} of its batches, where the --time budget ended)" if fraction < 1 else ""
    resumed = f" (resumed: {trained_here} of its images trained now)" if images_before else ""
    run.log(f"epoch {epoch}/{config.epochs}{partial}: train_loss {row['train_loss']:.4f} train_acc "
            f"{row['train_acc']:.3f} | val_loss {val_loss:.4f} val_acc {val_acc:.3f} | "
            f"{trained_here / row['seconds']:.0f} img/s{resumed}, {row['seconds']:.1f}s"
            + (f" | {row['skipped_steps']} steps skipped (non-finite loss)" if row["skipped_steps"] else "")
            + (" *" if improved else ""))


def _check_plan(run: Run, epoch: int, actual: float) -> None:
    """After epoch `epoch` of a --time run, which took `actual` seconds of wall time (training, validation
    and its files): if that is REPLAN_DRIFT more or less than planned, correct the measured speed at the side
    that epoch trained at and plan the remaining epochs again (once), stretching the schedules to the new
    length."""
    budget, state, parts, config = run.budget, run.state, run.parts, run.config
    state.budget_replanned = True
    side = budget.sides(config.epochs)[epoch - 1]
    train_images, val_images = samples_per_epoch(run.train_loader), len(run.val_loader.dataset)
    planned = epoch_seconds(side, budget.plan.speed, train_images, val_images)
    actual = distributed.broadcast(actual)  # rank 0's clock decides for all
    if not replan_needed(planned, actual):
        return
    speed = corrected_speed(budget.plan.speed, side, actual, train_images, val_images)
    steps_per_epoch = len(run.train_loader)
    new = distributed.broadcast(plan(budget.seconds, budget.elapsed(), speed, steps_per_epoch, config.batch_size,
                                     train_images, val_images, budget.sides, done_epochs=epoch))
    run.log(f"time budget: epoch {epoch} took {actual:.1f}s instead of {planned:.1f}s; re-planned to "
            f"{new.epochs} epochs ({new.total_steps} steps)")
    run.config = dataclasses.replace(config, epochs=new.epochs)
    state.planned_steps = new.total_steps
    set_schedule_length(parts.scheduler, config.schedule, new.total_steps, round(config.warmup_epochs * steps_per_epoch))
    if parts.average is not None:
        parts.average.decay = decay_for(new.total_steps)
    budget.plan = new
    if run.world.is_main:
        write_yaml(run.run_dir / CONFIG, run.config.to_dict())  # config.yaml and the checkpoint agree on the plan
    save_checkpoint(run)


def save_checkpoint(run: Run) -> None:
    """RUN/checkpoint.safetensors for `cnnlab train --resume`."""
    state, parts = run.state, run.parts
    state.unreadable = run.unreadable.state()
    # every process's random-number state, so a resume with as many processes continues each one exactly
    rng = distributed.gather_objects(capture_rng(parts.device))
    if not run.world.is_main:
        return
    extra = {}
    if run.best_val is not None:
        extra = {"val.logits": run.best_val.logits, "val.labels": run.best_val.labels,
                 "val.indices": run.best_val.indices}
    if parts.average is not None:
        extra |= {f"ema.{name}": tensor for name, tensor in parts.average.state().items()}
    for rank, (tensors, _) in enumerate(rng[1:], start=1):
        extra |= {f"rng.rank{rank}.{name}": tensor for name, tensor in tensors.items()}
    save_training_checkpoint(run.run_dir, parts.model, parts.optimizer, parts.scheduler, parts.scaler, state,
                             run.config.to_dict(), run.classes, parts.device, extra=extra,
                             other_ranks_rng=[side for _, side in rng[1:]])


def _save_epoch(run: Run, improved: bool) -> None:
    """Weights, metrics, curves and the checkpoint of the epoch just finished (the checkpoint last).

    If a file cannot be written (disk full, read-only), training stops: going on would compute
    epochs that cannot be kept. The files of the previous epoch are intact, so --resume works.
    """
    state, model = run.state, run.parts.saved_model
    if not run.world.is_main:
        save_checkpoint(run)  # takes part in gathering the random-number states; rank 0 writes
        return
    try:
        if improved:
            save_weights(model, run.run_dir / BEST, run.metadata | {"epoch": state.epoch})
        save_weights(model, run.run_dir / LAST, run.metadata | {"epoch": state.epoch})
        write_metrics(run.run_dir, state.history)
        if run.unreadable.count() != run.reported_unreadable:
            run.write_dataset_info()
        plots.learning_curves(state.history, run.run_dir / CURVES, title=f"{run.config.model} on "
                              f"{Path(run.config.data).name}", best_epoch=state.best_epoch)
        save_checkpoint(run)
        # after the checkpoint: a tracker mirrors only epochs a --resume will not train again
        for warning in log_epoch(run.trackers, state.history[-1]):
            run.log(warning)
    except CnnlabError as error:
        raise CnnlabError(f"{error}. Training stopped after epoch {state.epoch} because its files could not be "
                          f"saved; the last checkpoint in {run.run_dir} is kept: once this is fixed, continue "
                          f"with `cnnlab train --resume {run.run_dir}`") from None


def _stop_on_signal(run: Run, signum: int, save: bool) -> None:
    """After SIGINT/SIGTERM: write a checkpoint (mid-epoch if `save`) and raise TrainingInterrupted."""
    if save:
        save_checkpoint(run)
    distributed.barrier()  # the checkpoint is on disk before any process exits
    raise TrainingInterrupted(signum, f"{signal.Signals(signum).name}: training stopped at {run.state.position()}; "
                                      f"the checkpoint is in {run.run_dir / CHECKPOINT}. Continue with: "
                                      f"cnnlab train --resume {run.run_dir}")
