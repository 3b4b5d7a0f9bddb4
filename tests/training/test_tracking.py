"""`train --log tensorboard|mlflow`: what the trackers hold, read back with TensorBoard's own reader and MLflow's
client, against the run folder's files; a resumed run continues the same tracker run; errors are one line."""

from __future__ import annotations

import csv
import json
import socket
import sys

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.training import tracking
from cnnlab.training.record import TENSORBOARD_DIR, TRACKING

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2  # noqa: E402

from cnnlab.runs.diagnosis import Verdict  # noqa: E402


def _fit(**options):
    from cnnlab.commands.train import fit
    return fit(**options)


@pytest.fixture(scope="module")
def tracked_run(tiny_data, tmp_path_factory):
    """A 1-epoch run logged to both trackers, then resumed to 2 epochs (the working directory elsewhere, to show
    MLflow writes nothing there); returns (run folder, the working directory, the first MLflow run id, the
    resumed run's history: both epochs' unrounded metrics, which metrics.csv holds to 4 decimals)."""
    root = tmp_path_factory.mktemp("tracked")
    cwd = root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            patch.delenv(name, raising=False)
        out = root / "runs" / "tracked"
        _fit(data=str(tiny_data), img_size=32, epochs=1, batch_size=8, workers=0, out=str(out), model="simple_cnn",
             model_options={"widths": [8, 16]}, cache="off", precision="fp32", verbose=False,
             log=["tensorboard", "mlflow"])
        first_id = json.loads((out / TRACKING).read_text())["mlflow"]["run_id"]
        resumed = _fit(resume=out, epochs=2, verbose=False)
    return out, cwd, first_id, resumed.history


def _metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.mark.slow  # two trainings (run and resume); the MLflow store is touched fast below
def test_tensorboard_holds_every_epoch_once_and_the_end_of_the_run(tracked_run):
    run_dir, _, _, rows = tracked_run
    assert [row["epoch"] for row in _metrics(run_dir)] == ["1", "2"]
    events = _events(run_dir)
    for column, tag in (("val_loss", "loss/val"), ("train_loss", "loss/train"), ("val_acc", "accuracy/val"),
                        ("lr", "lr")):
        logged = events.Scalars(tag)
        assert [event.step for event in logged] == [1, 2], tag  # the resume added epoch 2 once
        for event, row in zip(logged, rows):
            assert event.value == pytest.approx(row[column], rel=1e-6), tag  # float32 in the event file
    evaluation = json.loads((run_dir / "eval_val.json").read_text())
    assert events.Scalars("eval/val_accuracy")[-1].value == pytest.approx(evaluation["accuracy"], abs=1e-6)
    assert events.Scalars("eval/val_macro_f1")[-1].value == pytest.approx(evaluation["macro_f1"], abs=1e-6)
    diagnosis = json.loads((run_dir / "diagnosis.json").read_text())
    text = events.Tensors("verdict/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text.startswith(f"**{Verdict(diagnosis['verdict']).label}**\n\n")
    assert diagnosis["headline"] in text
    from cnnlab.data.images import image_size
    curves = events.Images("learning_curves")[-1]
    assert (curves.width, curves.height) == image_size(run_dir / "learning_curves.png")
    assert events.Images("confusion_matrix")
    # the HParams tab: every option, as config.yaml holds it
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model"].string_value == "simple_cnn"
    assert start.hparams["img_size"].number_value == 32
    assert json.loads(start.hparams["model_options"].string_value) == {"widths": [8, 16]}
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS


@pytest.mark.slow
def test_mlflow_run_holds_the_config_metrics_verdict_and_files_and_the_resume_continues_it(tracked_run):
    run_dir, cwd, first_id, rows = tracked_run
    record = json.loads((run_dir / TRACKING).read_text())["mlflow"]
    assert record["run_id"] == first_id  # the resume continued the same MLflow run
    assert record["uri"] == f"sqlite:///{run_dir.parent / 'mlflow.db'}"
    assert list(cwd.iterdir()) == []  # nothing in the working directory (MLflow's default ./mlruns)
    client = MlflowClient(record["uri"])
    run = client.get_run(first_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert client.get_experiment(run.info.experiment_id).name == "shapes"  # the data folder's name
    params = run.data.params
    assert params["model"] == "simple_cnn" and params["img_size"] == "32" and params["epochs"] == "1"
    assert json.loads(params["model_options"]) == {"widths": [8, 16]}
    history = client.get_metric_history(first_id, "loss/val")
    assert [metric.step for metric in history] == [1, 2]
    assert [metric.value for metric in history] == [row["val_loss"] for row in rows]  # float64, exactly
    evaluation = json.loads((run_dir / "eval_val.json").read_text())
    assert run.data.metrics["eval/val_accuracy"] == pytest.approx(evaluation["accuracy"], abs=1e-9)
    diagnosis = json.loads((run_dir / "diagnosis.json").read_text())
    assert run.data.tags["cnnlab.verdict"] == Verdict(diagnosis["verdict"]).label
    assert diagnosis["headline"] in run.data.tags["mlflow.note.content"]
    artifacts = {item.path: item.file_size for item in client.list_artifacts(first_id)}
    for name in ("best.safetensors", "model.json", "report.html", "learning_curves.png", "confusion_matrix_val.png"):
        assert artifacts[name] == (run_dir / name).stat().st_size, name
    assert str(run_dir.parent / "mlartifacts") in run.info.artifact_uri


def test_an_interrupted_tracker_run_is_killed_not_finished(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    trackers = tracking.open_trackers(["mlflow"], run_dir, {"data": "/x/photos", "model": "resnet9"}, None, None)
    run_id = trackers[0].run_id
    tracking.close_trackers(trackers, "KILLED")
    assert trackers == []
    run = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "KILLED" and run.data.params["model"] == "resnet9"


def test_a_missing_package_is_one_line_before_any_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    out = tmp_path / "run"
    with pytest.raises(CnnlabError, match=r"--log mlflow needs a package .*pip install 'cnnlab\[mlflow\]'"):
        _fit(data=str(tmp_path / "no-such-folder"), out=str(out), log=["mlflow"], verbose=False)
    assert not out.exists()


def test_an_unreachable_server_is_refused_at_once(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CnnlabError, match=f"cannot reach the MLflow server at http://127.0.0.1:{port}"):
        tracking.check_trackers(["mlflow"], f"http://127.0.0.1:{port}")


def test_an_unknown_tracker_names_the_close_one():
    from cnnlab.config import TrainConfig
    with pytest.raises(CnnlabError, match=r"--log 'mlflw' is not allowed \(did you mean 'mlflow'\?\)"):
        TrainConfig(data="x", log=["mlflw"])
    assert TrainConfig(data="x", log="tensorboard").log == ["tensorboard"]


def test_a_tracker_that_fails_mid_run_is_dropped_with_a_warning():
    class Gone:
        name = "mlflow"

        def epoch(self, row):
            raise ConnectionError("server went away")

    class Kept:
        name = "tensorboard"
        rows = []

        def epoch(self, row):
            self.rows.append(row["epoch"])

    kept = Kept()
    trackers = [Gone(), kept]
    warnings = tracking.log_epoch(trackers, {"epoch": 3, "val_loss": 0.5})
    assert trackers == [kept] and kept.rows == [3]
    assert warnings == ["warning: --log mlflow stopped logging at epoch 3 (ConnectionError: server went away); "
                        "the run folder still records every epoch"]


def test_epoch_values_name_the_columns_and_leave_out_non_finite_losses():
    row = {"epoch": 2, "train_loss": float("nan"), "val_loss": 0.25, "train_acc": 0.5, "val_acc": 0.75, "lr": 1e-3,
           "seconds": 2.0, "side": 32, "skipped_steps": 1}
    assert tracking.epoch_values(row) == {"loss/val": 0.25, "accuracy/train": 0.5, "accuracy/val": 0.75,
                                          "lr": 1e-3, "epoch_seconds": 2.0, "image_side": 32.0}
    assert tracking.flat_params({"a": None, "b": {"x": [1]}, "c": 3}) == {"a": "None", "b": '{"x": [1]}', "c": 3}
