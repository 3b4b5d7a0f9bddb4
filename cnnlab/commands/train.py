"""`cnnlab train`: fit() reads as three calls, and finish() is the end of every run.

    run = prepare(config)   # data, model, loaders, optimizer, run folder  (cnnlab.training.setup)
    train(run)              # the epoch loop, checkpoints, signals          (cnnlab.training.loop)
    finish(run)             # evaluation of the validation split, verdict, image sizes, layer table,
                            # augmentation preview, report.html            (this module)

fit(resume=RUN) continues a run from its checkpoint with the options in its config.yaml; the options
given with it must equal the run's, except the few a continuation may change (RESUME_CHANGEABLE).
"""

from __future__ import annotations

import dataclasses
import html
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from torch import nn

from cnnlab import plots
from cnnlab.config import Help, TrainConfig, config_from_file
from cnnlab.data.check import size_summary
from cnnlab.errors import CnnlabError
from cnnlab.models.summary import summarize_model
from cnnlab.runs.diagnosis import Diagnosis, diagnose
from cnnlab.runs.evaluation import EvalResult, write_evaluation
from cnnlab.runs.inference import open_trained
from cnnlab.runs.preview import PreviewParts, write_run_preview
from cnnlab.runs.reject import write_threshold
from cnnlab.runs.reader import diagnosis_inputs, read_run
from cnnlab.runs.report import build_report, write_report
from cnnlab.training import Run, distributed, prepare, train
from cnnlab.signals import TrainingInterrupted
from cnnlab.training.record import (BEST, CONFIG, CURVES, IMAGE_SIZES, METRICS, MODEL, REPORT, RISK_COVERAGE,
                                    discard_unstarted, evaluation_figures, write_diagnosis, write_summary)
from cnnlab.training.tracking import RunSummary, close_trackers, log_finish
from cnnlab.training.setup import model_options
from cnnlab.training.state import load_training_checkpoint

# Options a resumed run may change, because none alters what the steps compute: the data order and the
# augmentation depend on neither the workers nor where the data folder is or how it is cached;
# --epochs only extends the run; --log and --mlflow-uri only say where it is mirrored.
RESUME_CHANGEABLE = ("epochs", "workers", "data", "cache", "cache_dir", "log", "mlflow_uri")
# Options recorded resolved ("auto" -> bf16): giving the unresolved value again is giving the same value.
RESOLVED_FROM = {"device": "auto", "precision": "auto", "cache": "auto", "workers": None, "channels_last": None,
                 "batch_size": "auto"}
# A notebook shows the report in a frame this tall (px), scrolled inside: the overview, the verdict and the top of
# the learning curves at once, without the page pushing the notebook's next cells out of sight.
REPORT_FRAME_HEIGHT = 720


@dataclass
class TrainResult:
    """What fit() returns: the per-epoch history, the verdict, the evaluation, and where everything was written."""

    run_dir: Path
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    best_val_acc: float
    stopped_early: bool = False
    model: nn.Module | None = None
    """The trained model after the last epoch, as last.safetensors holds it (the weight average with --ema)."""
    skipped_steps: int = 0
    """Steps whose loss was not finite (the weights were not updated from them)."""
    unreadable: dict = field(default_factory=dict)
    """{split: number of images that could not be read}."""
    diagnosis: Diagnosis | None = None
    """The verdict on the learning curves (diagnosis.json)."""
    evaluation: EvalResult | None = None
    """The best epoch's validation split, evaluated (eval_val.json)."""

    def summary(self) -> str:
        """A few lines for the terminal."""
        last = self.history[-1]
        lines = [f"run folder: {self.run_dir}",
                 f"best epoch {self.best_epoch}: val_loss {self.best_val_loss:.4f}, val_acc {self.best_val_acc:.4f}"
                 f" (last epoch {last['epoch']}: val_acc {last['val_acc']:.4f})"]
        if self.stopped_early:
            lines.append("stopped early: validation loss stopped improving (--patience)")
        if self.skipped_steps:
            lines.append(f"skipped {self.skipped_steps} steps whose loss was not finite (skipped_steps in metrics.csv)")
        if self.unreadable:
            counts = ", ".join(f"{n} in {split}" for split, n in self.unreadable.items())
            lines.append(f"skipped unreadable images: {counts} (listed in {self.run_dir / 'dataset.json'})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """In a notebook: the run's report (report.py's page, rebuilt from the run folder) in an <iframe>, which
        keeps the page's own CSS and Content-Security-Policy from touching the notebook's."""
        return (f'<iframe srcdoc="{html.escape(build_report(self.run_dir), quote=True)}" title="cnnlab run report" '
                f'style="width: 100%; height: {REPORT_FRAME_HEIGHT}px; border: 1px solid #d1d9e0"></iframe>')


def fit(config: TrainConfig | None = None, *, resume: str | os.PathLike | None = None, overwrite: bool = False,
        verbose: bool = True, **options: Any) -> TrainResult:
    """Train a model on an image folder; `options` are TrainConfig fields (same names as the CLI flags).

    A run folder that already holds a run is refused unless `overwrite` (its run files are deleted first).
    resume=RUN_DIR continues that run exactly where its checkpoint left it, with the options in its
    config.yaml; `options` given with it must be the run's own, or RESUME_CHANGEABLE ones.
    """
    checkpoint = None
    if resume is not None:
        if config is not None:
            raise CnnlabError("fit(resume=RUN_DIR) takes its options from the run folder; do not pass a config")
        config, checkpoint = resume_config(resume, options)
    elif config is None:
        config = TrainConfig(**options)
    elif options:
        raise CnnlabError(f"give the options either as a TrainConfig or as keywords, not both ({', '.join(options)})")
    run = prepare(config, checkpoint=checkpoint, overwrite=overwrite, verbose=verbose)
    status = "FAILED"  # how a tracker (--log) records the run's end
    try:
        try:
            train(run)
        except BaseException as error:
            if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)):
                status = "KILLED"  # stopped with a checkpoint: --resume continues it, and its tracker run
            close_trackers(run.trackers, status)  # event files closed before a failed run's folder goes
            if checkpoint is None and run.world.is_main:  # failed before its first checkpoint: leave nothing
                discard_unstarted(run.run_dir, run.created_folder)
            raise
        result = finish(run) if run.world.is_main else _result(run)  # rank 0 evaluates, judges, reports
        status = "FINISHED"
        distributed.barrier()  # the others wait for it, then all leave together
        return result
    finally:
        close_trackers(run.trackers, status)
        distributed.finish()


def train_command(config_file: Annotated[str | None, Help(
                      "Read options from this YAML file (keys: the option names with underscores, e.g. a run's "
                      "config.yaml); flags override it.", flag="--config")] = None,
                  resume: Annotated[str | None, Help(
                      "Continue the run in this folder exactly where its checkpoint (written every epoch and on "
                      "Ctrl-C/kill) left it, with its own options; options given too must be the run's own, except "
                      "--epochs (to extend it), --workers, --data (a moved folder), --cache, --cache-dir, --log and "
                      "--mlflow-uri.")] = None,
                  overwrite: Annotated[bool, Help("Replace the run already in --out (its files are deleted); without "
                                                  "it such a folder is refused.")] = False,
                  nproc: Annotated[int, Help(
                      "Train with this many processes on this machine (torchrun's launcher, DistributedDataParallel: "
                      "one per GPU, or CPU processes with gloo); --batch-size stays the global batch. Under an "
                      "external torchrun or srun, leave it out.")] = 1,
                  **options: Any) -> TrainResult | int:
    """Train a model on an image folder and write a self-describing run folder.

    Every option is a field of cnnlab.TrainConfig. --config FILE.yaml reads options from a file (e.g. a run's own
    config.yaml); flags typed on the command line override it. Ctrl-C or kill (SIGTERM) stops after the current
    step, saves a checkpoint and prints how to resume."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command without --nproc
        return distributed.launch(nproc, _without_nproc(sys.argv[1:]))
    values = config_from_file(config_file) if config_file else {}
    values |= options
    if resume:
        return fit(resume=resume, **values)
    return fit(TrainConfig(**values), overwrite=overwrite)


def _without_nproc(arguments: list[str]) -> list[str]:
    """The command line minus --nproc N (or --nproc=N), for the processes the launcher starts."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            kept.append(argument)
    return kept


def show(result: TrainResult | int) -> int:
    """The run's summary and verdict (rank 0 of several processes speaks); the launcher's exit code."""
    if isinstance(result, int):
        return result
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(result.summary(), flush=True)
    if result.diagnosis is not None:
        print(f"verdict: {result.diagnosis.verdict.label.lower()}; report: {result.run_dir / REPORT}", flush=True)
    return 0


def _same(name: str, given: Any, value: Any, saved: Any) -> bool:
    """Whether an option given with --resume (as typed, and as TrainConfig reads it) says the same as the
    run's recorded value."""
    if name in RESOLVED_FROM and given == RESOLVED_FROM[name]:
        return True
    if name in ("data", "out", "weights", "cache_dir") and value and saved:
        return os.path.abspath(str(value)) == os.path.abspath(str(saved))
    return value == saved


def resume_config(run_dir: str | os.PathLike, given: dict[str, Any]):
    """(the run's TrainConfig with the changeable options applied, its checkpoint) for fit(resume=RUN)."""
    run_dir = Path(run_dir)
    checkpoint = load_training_checkpoint(run_dir)
    record = read_run(run_dir)
    saved = checkpoint.config
    if record.config is None:
        raise CnnlabError(f"{run_dir / 'config.yaml'} is missing; is {run_dir} a cnnlab run folder?")
    current = record.config.to_dict()
    edited = sorted(k for k in set(saved) | set(current)
                    if k not in RESUME_CHANGEABLE + ("out",) and saved.get(k) != current.get(k))
    if edited:
        name = edited[0]
        raise CnnlabError(f"{run_dir / 'config.yaml'} was edited since the checkpoint was written ({name}: "
                          f"{saved.get(name)!r} -> {current.get(name)!r}); put it back, or start a new run with "
                          f"--weights {run_dir / 'last.safetensors'}")
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise CnnlabError(f"unknown option(s) for --resume: {', '.join(unknown)}")
    # normalise the given values the way TrainConfig does (e.g. --lr "0.002" -> 0.002)
    normalised = TrainConfig.from_dict(saved | given).to_dict()
    values = dict(saved)
    values["out"] = str(run_dir.absolute())  # where the run is now, even if it was moved
    differing = []
    for name in given:
        value = normalised[name]
        if _same(name, given[name], value, saved.get(name)):
            continue
        if name in RESUME_CHANGEABLE:
            values[name] = value
        elif name != "out" or not _same("out", given[name], value, str(run_dir)):
            differing.append(f"--{name.replace('_', '-')} {value} (the run has {saved.get(name)})")
    if differing:
        raise CnnlabError(f"--resume continues {run_dir} with its own options; these differ from its config.yaml: "
                          f"{'; '.join(differing)}. Only {', '.join('--' + n.replace('_', '-') for n in RESUME_CHANGEABLE)} "
                          f"may change; to change the others, start a new run with --weights "
                          f"{run_dir / 'last.safetensors'}")
    if values["epochs"] < saved["epochs"]:
        raise CnnlabError(f"--epochs {values['epochs']} is fewer than the {saved['epochs']} epochs {run_dir} was "
                          "started with; --resume can only keep or extend the number of epochs")
    state = checkpoint.state
    if state.stopped_early:
        raise CnnlabError(f"{run_dir} stopped early at epoch {state.epoch} (--patience): there is nothing to resume; "
                          f"to train on, start a new run with --weights {run_dir / 'best.safetensors'}")
    if state.epoch >= values["epochs"]:
        raise CnnlabError(f"{run_dir} has already finished its {state.epoch} epochs; pass --epochs N with N > "
                          f"{state.epoch} to train it further")
    if not Path(values["data"]).exists():  # a folder, or a label file
        raise CnnlabError(f"the data folder this run was trained on, {values['data']}, no longer exists (moved or "
                          "deleted?); pass --data with its new place")
    return TrainConfig.from_dict(values), checkpoint


def finish(run: Run) -> TrainResult:
    """The end of a run: evaluate the best epoch's validation logits (eval_val.json and its plots) and choose the
    `unknown` threshold on them (reject.json, risk_coverage.png), the verdict (diagnosis.json), every image's size (dataset.json), the layer table (summary.json), the
    augmentation preview and report.html; prints the verdict once."""
    state, run_dir = run.state, run.run_dir
    record = read_run(run_dir)
    evaluation = None
    if run.best_val is not None and len(run.best_val.labels):
        explainer = open_trained(run_dir, "best", run.config.device)  # the weights the logits came from
        evaluation = write_evaluation(record, "val", "best", run.val_loader.dataset, run.best_val, explainer=explainer)
        write_threshold(run_dir, evaluation.probabilities, evaluation.labels, "val", "best", title=record.model)
    if run.best_val is not None:  # the validation images that were read, per class
        per_class = run.best_val.labels.bincount(minlength=len(run.classes)).tolist()
        val_counts = dict(zip(run.classes, per_class))
    else:
        val_counts = run.splits.counts()["val"]
    inputs = diagnosis_inputs(run.config, val_counts, len(run.classes))
    diagnosis = diagnose(state.history, **inputs)
    write_diagnosis(run_dir, diagnosis.to_dict(), inputs)
    sizes = size_summary([sample.path for samples in run.splits.splits.values() for sample in samples])
    run.dataset_info["image_sizes"] = sizes
    run.write_dataset_info()
    if "megapixel_histogram" in sizes:
        plots.image_sizes(sizes, run_dir / IMAGE_SIZES, img_size=run.config.img_size)
    _write_layer_table(run)
    parts = PreviewParts(run.train_loader.dataset, run.parts.pipeline, run.classes,
                         frozenset(run.unreadable.found["train"]))
    write_run_preview(run_dir, run.config, parts)
    write_report(run_dir)
    if run.trackers:
        _track_finish(run, diagnosis, evaluation)
    run.log(diagnosis.describe())
    return _result(run, diagnosis, evaluation)


def _track_finish(run: Run, diagnosis: Diagnosis, evaluation: EvalResult | None) -> None:
    """The verdict, the validation evaluation, the figures and the run's main files, to the --log trackers."""
    run_dir = run.run_dir
    figures = {"learning_curves": run_dir / CURVES, "confusion_matrix": run_dir / evaluation_figures("val")[
        "confusion_matrix"], "reliability": run_dir / evaluation_figures("val")["reliability"],
               "risk_coverage": run_dir / RISK_COVERAGE}
    summary = RunSummary(diagnosis.verdict.label, diagnosis.describe(),
                         evaluation.to_dict() if evaluation is not None else None, figures,
                         [run_dir / name for name in (REPORT, BEST, MODEL, CONFIG, METRICS)])
    for warning in log_finish(run.trackers, summary, run.state.epoch):
        run.log(warning)


def _result(run: Run, diagnosis: Diagnosis | None = None, evaluation: EvalResult | None = None) -> TrainResult:
    state = run.state
    return TrainResult(run.run_dir, state.history, state.best_epoch, state.best_val_loss, state.best_val_acc,
                       state.stopped_early, model=run.parts.saved_model, skipped_steps=state.skipped_steps,
                       unreadable=run.unreadable.count(), diagnosis=diagnosis, evaluation=evaluation)


def _write_layer_table(run: Run) -> None:
    """summary.json: the model's layer table at the training size, for the report."""
    size = run.config.img_size
    try:
        summary = summarize_model(run.config.model, (3, size, size), len(run.classes), **model_options(run.config))
    except (CnnlabError, TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        run.log(f"warning: no layer table for the report ({error})")
        return
    write_summary(run.run_dir, summary.to_dict())
