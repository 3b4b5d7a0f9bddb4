"""Experiment tracking: what the run folder holds, mirrored to TensorBoard or MLflow (`train --log`).

A run's own files stay the record (config.yaml, metrics.csv, diagnosis.json, eval_val.json, the figures, the
weights); a tracker copies them where practitioners already compare runs, as the run goes:

    when            TensorBoard (RUN/tensorboard/ event files)      MLflow (a tracking store)
    start           config as hparams (HParams tab)                 config as params, the run folder as a tag
    every epoch     loss/accuracy (train, val), lr, seconds, side   the same metrics, step = epoch
    end             verdict (text), eval/val accuracy and macro F1, the verdict and its label (tags), eval metrics,
                    learning curves and confusion matrix (images)   the figures, report.html, best.safetensors and
                                                                    model.json (artifacts)

MLflow's default store is local and needs no server: `sqlite:///<the run folder's parent>/mlflow.db` with artifacts
beside it in `mlartifacts/`, so every run trained into one folder (runs/ by default) lands in one store that
`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` shows (the UI comes with the full `mlflow` package; cnnlab
needs only `mlflow-skinny`). --mlflow-uri, or MLFLOW_TRACKING_URI, names another store or a server; the experiment
is the data folder's name unless MLFLOW_EXPERIMENT_NAME says otherwise. A resumed run (--resume) continues the same
MLflow run (its id is kept in RUN/tracking.json) and TensorBoard drops what was logged after the checkpoint's epoch.

Only the process that writes the run folder (rank 0) logs. Both libraries are optional extras
(`pip install 'cnnlab[tensorboard]'`, `'cnnlab[mlflow]'`), imported only when asked for.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cnnlab.data.images import read_image
from cnnlab.errors import CnnlabError
from cnnlab.files import write_json
from cnnlab.training.record import TENSORBOARD_DIR, TRACKING

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
# metrics.csv column -> the name a tracker shows (grouped by what they measure, as TensorBoard lays out tags)
EPOCH_METRICS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "accuracy/train",
                 "val_acc": "accuracy/val", "lr": "lr", "seconds": "epoch_seconds", "side": "image_side"}
REACH_SECONDS = 5  # a tracking server that does not accept a connection in this long is not there
# MLflow retries a failed request 7 times with doubling waits (about 4 minutes); 3 retries (2+4+8 s) ride out a
# server restart without holding training for minutes per epoch. Only where the user has not set it.
MLFLOW_RETRIES = "3"
INSTALL = {"tensorboard": "pip install 'cnnlab[tensorboard]' (the tensorboard package)",
           "mlflow": "pip install 'cnnlab[mlflow]' (mlflow-skinny with SQLAlchemy and Alembic)"}


@dataclass
class RunSummary:
    """What a finished run adds to its tracker: the verdict, the validation evaluation and the files to attach."""

    verdict: str
    """The verdict's label (e.g. 'Well trained')."""
    verdict_text: str
    """The verdict with its evidence and advice, as the report and the terminal say it."""
    evaluation: dict | None
    """eval_val.json's numbers (accuracy, loss, macro_f1, images), or None where nothing was evaluated."""
    figures: dict[str, Path]
    """{name: PNG file} of the figures written (learning curves, confusion matrix, ...)."""
    artifacts: list[Path]
    """Files attached as artifacts where the tracker keeps files (MLflow): report, weights, model.json."""


def flat_params(config: dict) -> dict[str, str | int | float | bool]:
    """The config as flat hyperparameters: nested values (model_options) as JSON text, None as 'None', so both
    trackers show every option, including the ones left at their defaults."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, (dict, list, tuple)):
            flat[key] = json.dumps(value, sort_keys=True)
        elif value is None:
            flat[key] = "None"
        else:
            flat[key] = value
    return flat


def epoch_values(row: dict) -> dict[str, float]:
    """One metrics.csv row as {tracker name: value} (a non-finite loss is left out: neither tracker plots it)."""
    return {name: float(row[key]) for key, name in EPOCH_METRICS.items()
            if row.get(key) is not None and math.isfinite(float(row[key]))}


def evaluation_values(evaluation: dict | None) -> dict[str, float]:
    """eval_val.json's headline numbers under eval/val_<name>."""
    if not evaluation:
        return {}
    split = evaluation.get("split", "val")
    return {f"eval/{split}_{key}": float(evaluation[key]) for key in ("accuracy", "loss", "macro_f1")
            if evaluation.get(key) is not None}


def check_trackers(names: list[str], mlflow_uri: str | None) -> None:
    """Before any data is read: each tracker's package is installed and an MLflow server answers, so a run does
    not scan and cache a folder to fail at its first epoch (or wait on a server's retries for minutes)."""
    for name in dict.fromkeys(names):
        _import(name)
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if name == "mlflow" and uri:
            _reach(uri)


def _reach(uri: str) -> None:
    """A clear error when an http(s) tracking server does not accept a connection within REACH_SECONDS."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return  # a file, a database or a managed service: MLflow's own client says what is wrong
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=REACH_SECONDS).close()
    except OSError as error:
        raise CnnlabError(f"--log mlflow: cannot reach the MLflow server at {uri} ({error.strerror or error}); "
                          "start it, or fix --mlflow-uri / MLFLOW_TRACKING_URI, or leave both out for a local "
                          "store beside the run folder") from None


# What each tracker needs importable: torch's SummaryWriter writes through tensorboard (and says so only with a
# traceback); MLflow's local store is SQLite through SQLAlchemy and Alembic
PACKAGES = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "mlflow": ("mlflow", "sqlalchemy", "alembic")}


def _import(name: str):
    """The tracker's library (torch.utils.tensorboard, or mlflow), or one line saying how to install it."""
    try:
        modules = [importlib.import_module(package) for package in PACKAGES[name]]
    except ImportError as error:
        raise CnnlabError(f"--log {name} needs a package that is not installed ({error.name}): {INSTALL[name]}") \
            from None
    return modules[1] if name == "tensorboard" else modules[0]


class TensorBoardTracker:
    """Event files in RUN/tensorboard/ (`tensorboard --logdir RUN/tensorboard`, or the runs folder for many)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict, resumed_epoch: int | None):
        module = _import("tensorboard")
        from torch.utils.tensorboard.summary import hparams
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        # purge_step: a resumed run drops the events a crashed process wrote after its checkpoint's epoch
        self.writer = module.SummaryWriter(str(self.log_dir), purge_step=None if resumed_epoch is None
                                           else resumed_epoch + 1)
        if resumed_epoch is None:
            # the HParams tab: the options, and the metrics it tabulates beside them (logged at the end)
            metrics = {"eval/val_accuracy": 0.0, "accuracy/val": 0.0, "loss/val": 0.0}
            experiment, start, _ = hparams(flat_params(config), metrics)
            for summary in (experiment, start):
                self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def epoch(self, row: dict) -> None:
        for tag, value in epoch_values(row).items():
            self.writer.add_scalar(tag, value, int(row["epoch"]))
        self.writer.flush()

    def finish(self, summary: RunSummary, last_epoch: int) -> None:
        self.writer.add_text("verdict", f"**{summary.verdict}**\n\n" + summary.verdict_text.replace("\n", "\n\n"),
                             last_epoch)
        for tag, value in evaluation_values(summary.evaluation).items():
            self.writer.add_scalar(tag, value, last_epoch)
        for name, path in summary.figures.items():
            if path.is_file():
                self.writer.add_image(name, read_image(path), last_epoch)  # (3, H, W) uint8

    def close(self, status: str) -> None:
        if status == "FINISHED":
            from torch.utils.tensorboard.summary import hparams
            _, _, end = hparams({}, {})
            self.writer.file_writer.add_summary(end)
        self.writer.close()


class MlflowTracker:
    """One MLflow run per cnnlab run, in the store `uri` (see the module doc for the default)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, config: dict, resumed_epoch: int | None, uri: str | None):
        mlflow = _import("mlflow")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_RETRIES)
        for logger in ("mlflow", "alembic"):  # their INFO lines (creating tables, ...) are not the run's news
            logging.getLogger(logger).setLevel(logging.WARNING)
        from mlflow.entities import Param
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        local = uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = (f"sqlite:///{run_dir.parent.absolute() / MLFLOW_DB}" if local
                    else uri or os.environ["MLFLOW_TRACKING_URI"])
        try:
            self.client = mlflow.MlflowClient(self.uri)
            self.run_id = self._continued(resumed_epoch)
            if self.run_id is None:
                experiment = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                              or Path(config.get("data") or "cnnlab").name,
                                              run_dir.parent.absolute() / MLFLOW_ARTIFACTS if local else None)
                run = self.client.create_run(experiment, run_name=run_dir.name,
                                             tags={"cnnlab.run_dir": str(run_dir.absolute()),
                                                   "cnnlab.model": str(config.get("model"))})
                self.run_id = run.info.run_id
                params = [Param(key, str(value)) for key, value in flat_params(config).items()]
                self.client.log_batch(self.run_id, params=params)
                write_json(run_dir / TRACKING, {"mlflow": {"uri": self.uri, "run_id": self.run_id}})
            else:
                self.client.update_run(self.run_id, status="RUNNING")
        except CnnlabError:
            raise
        except Exception as error:  # an unreachable server, a store of another version, a refused write, ...
            raise CnnlabError(f"--log mlflow: could not open the MLflow run at {self.uri} "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                              "check --mlflow-uri / MLFLOW_TRACKING_URI, or leave them out for a local store")
        self.mlflow = mlflow

    def _continued(self, resumed_epoch: int | None) -> str | None:
        """The MLflow run a resumed cnnlab run continues (same store), or None for a new one."""
        record = self.run_dir / TRACKING
        if resumed_epoch is None or not record.is_file():
            return None
        known = json.loads(record.read_text()).get("mlflow", {})
        return known.get("run_id") if known.get("uri") == self.uri else None

    def _experiment(self, name: str, artifacts: Path | None) -> str:
        """The experiment's id, made on first use (local store: artifacts in `artifacts`, not the working
        directory MLflow would pick)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = artifacts.as_uri() if artifacts is not None else None
        return self.client.create_experiment(name, artifact_location=location)

    def epoch(self, row: dict) -> None:
        from mlflow.entities import Metric
        step, now = int(row["epoch"]), _millis()
        metrics = [Metric(name, value, now, step) for name, value in epoch_values(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: RunSummary, last_epoch: int) -> None:
        from mlflow.entities import Metric, RunTag
        now = _millis()
        metrics = [Metric(name, value, now, last_epoch) for name, value in evaluation_values(summary.evaluation).items()]
        # tags hold text up to 5000 characters in the stores MLflow ships; the full text is in report.html
        tags = [RunTag("cnnlab.verdict", summary.verdict), RunTag("mlflow.note.content", summary.verdict_text[:5000])]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        for path in list(summary.figures.values()) + summary.artifacts:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def _millis() -> int:
    """Now, in the milliseconds MLflow timestamps metrics with."""
    return int(time.time() * 1000)


def open_trackers(names: list[str], run_dir: Path, config: dict, resumed_epoch: int | None,
                  mlflow_uri: str | None) -> list:
    """The trackers `--log` names, each started (a resumed run: `resumed_epoch` is its checkpoint's epoch)."""
    trackers = []
    try:
        for name in dict.fromkeys(names):  # --log mlflow --log mlflow: one
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(run_dir, config, resumed_epoch))
            else:
                trackers.append(MlflowTracker(run_dir, config, resumed_epoch, mlflow_uri))
    except BaseException:
        close_trackers(trackers, "FAILED")
        raise
    return trackers


def log_epoch(trackers: list, row: dict) -> list[str]:
    """Log one epoch to every tracker; a tracker that fails (a server gone away) is dropped with a warning
    returned, and training goes on: the run folder is the record, and hours of training are not lost to it."""
    warnings = []
    for tracker in list(trackers):
        try:
            tracker.epoch(row)
        except Exception as error:
            trackers.remove(tracker)
            warnings.append(f"warning: --log {tracker.name} stopped logging at epoch {row['epoch']} "
                            f"({type(error).__name__}: {error}); the run folder still records every epoch")
    return warnings


def log_finish(trackers: list, summary: RunSummary, last_epoch: int) -> list[str]:
    """Add the finished run's verdict, evaluation, figures and files to every tracker; warnings as log_epoch's."""
    warnings = []
    for tracker in list(trackers):
        try:
            tracker.finish(summary, last_epoch)
        except Exception as error:
            warnings.append(f"warning: --log {tracker.name} could not record the end of the run "
                            f"({type(error).__name__}: {error}); the run folder holds it")
    return warnings


def close_trackers(trackers: list, status: str) -> None:
    """End every tracker's run: FINISHED, KILLED (Ctrl-C/SIGTERM: resumable) or FAILED."""
    for tracker in trackers:
        tracker.close(status)
    trackers.clear()
