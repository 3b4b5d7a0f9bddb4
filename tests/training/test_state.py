"""Exact resume: a run continued from RUN/checkpoint.safetensors ends with the same bits as one that never
stopped -- across processes, with DataLoader workers, augmentation and dropout on, in fp32 and bf16,
after an epoch boundary or in the middle of an epoch (SIGINT, SIGTERM). And clear errors around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import cnnlab.training.loop as loop_module
from cnnlab.cli import app
from cnnlab.errors import CnnlabError
from cnnlab.signals import TrainingInterrupted
from cnnlab.runs.reader import read_metrics
from cnnlab.commands.train import fit
from cnnlab.training.state import CHECKPOINT_NAME, load_training_checkpoint

TINY = {"model": "simple_cnn", "img_size": 32, "batch_size": 8, "workers": 0, "model_options": {"widths": [8, 16]}, "cache": "off",
        "verbose": False}
CLI_TINY = ["--model", "simple_cnn", "--img-size", "32", "--workers", "2", "--model-option", "widths=[8,16]", "--cache", "off"]
# One intra-op thread: on a shared 2-core machine, OpenMP threads spinning for a core cost several
# times the CPU of the work itself. (Bit-identity holds at the default thread count as well.)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_same_weights(run_a, run_b, name="last.safetensors"):
    a, b = load_file(str(run_a / name)), load_file(str(run_b / name))
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{name}: tensors differ: {different}"


def _without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def _signal_during_step(monkeypatch, step: int, signum=signal.SIGINT, times: int = 1):
    """Send this process `signum` (`times` times) while training step number `step` of the run finishes."""
    original, calls = loop_module.train_step, [0]

    def train_step(*args, **kwargs):
        calls[0] += 1
        loss = original(*args, **kwargs)
        if calls[0] == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(loop_module, "train_step", train_step)


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def _finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """3 epochs without a stop, in this process (the reference for the in-process tests)."""
    return fit(data=str(tiny_data), epochs=3, out=str(tmp_path_factory.mktemp("straight") / "run"), **TINY)


def test_sigint_mid_epoch_then_resume_is_bit_identical(straight_run, tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)
    _signal_during_step(monkeypatch, step=7)  # 5 batches per epoch: epoch 2, batch 2
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(data=str(tiny_data), epochs=3, out=str(run), **TINY)
    assert stopped.value.exit_code == 130
    assert f"cnnlab train --resume {run}" in str(stopped.value)
    assert "epoch 2, after batch 2" in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is only installed around the loop
    checkpoint = load_training_checkpoint(run)
    assert (checkpoint.state.epoch, checkpoint.state.batches_done, checkpoint.state.step) == (1, 2, 7)
    assert [row["epoch"] for row in checkpoint.state.history] == [1]

    monkeypatch.undo()
    resumed = fit(resume=run, verbose=False)
    _assert_same_weights(straight_run.run_dir, run, "last.safetensors")
    _assert_same_weights(straight_run.run_dir, run, "best.safetensors")
    assert _without_seconds(resumed.history) == _without_seconds(straight_run.history)
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]
    assert resumed.best_epoch == straight_run.best_epoch


def test_second_sigint_stops_at_once_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _signal_during_step(monkeypatch, step=7, times=2)
    with pytest.raises(TrainingInterrupted, match="at once") as stopped:
        fit(data=str(tiny_data), epochs=3, out=str(run), **TINY)
    assert stopped.value.exit_code == 130
    state = load_training_checkpoint(run).state
    assert (state.epoch, state.batches_done) == (1, 0)  # the end-of-epoch-1 checkpoint, untouched
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]


def test_failed_checkpoint_write_stops_and_keeps_the_previous_one(straight_run, tiny_data, tmp_path, monkeypatch):
    import cnnlab.training.state as training_state

    real_save, calls = training_state.save_file, [0]

    def disk_full_at_second_checkpoint(tensors, path, metadata=None):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(28, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(training_state, "save_file", disk_full_at_second_checkpoint)
    run = tmp_path / "run"
    with pytest.raises(CnnlabError) as failed:
        fit(data=str(tiny_data), epochs=3, out=str(run), **TINY)
    message = str(failed.value)
    assert "No space left on device" in message and "previous version is kept" in message
    assert "stopped after epoch 2" in message and f"cnnlab train --resume {run}" in message
    assert load_training_checkpoint(run).state.epoch == 1
    monkeypatch.undo()
    fit(resume=run, verbose=False)  # once there is space again, nothing is lost
    _assert_same_weights(straight_run.run_dir, run)


def test_resume_errors_are_clear(straight_run, tmp_path):
    run = straight_run.run_dir
    with pytest.raises(CnnlabError, match="already finished its 3 epochs; pass --epochs"):
        fit(resume=run, verbose=False)
    with pytest.raises(CnnlabError, match=r"these differ from its config.yaml: --lr 0.1 \(the run has 0.002\); "
                                          r"--dropout 0.1 \(the run has 0.2\)\. Only --epochs, --workers"):
        fit(resume=run, epochs=5, lr=0.1, dropout=0.1, verbose=False)
    with pytest.raises(CnnlabError, match="fewer than the 3 epochs"):
        fit(resume=run, epochs=2, verbose=False)
    with pytest.raises(CnnlabError, match="no checkpoint.safetensors in it"):
        fit(resume=tmp_path, verbose=False)
    with pytest.raises(CnnlabError, match="no such run folder"):
        fit(resume=tmp_path / "nope", verbose=False)

    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("config.yaml", "model.json", CHECKPOINT_NAME):
        (edited / name).write_bytes((run / name).read_bytes())
    config = yaml.safe_load((edited / "config.yaml").read_text())
    (edited / "config.yaml").write_text(yaml.safe_dump(config | {"dropout": 0.1}))
    with pytest.raises(CnnlabError, match=r"was edited since the checkpoint was written \(dropout: 0.2 -> 0.1\)"):
        fit(resume=edited, epochs=4, verbose=False)

    (edited / CHECKPOINT_NAME).write_bytes((run / CHECKPOINT_NAME).read_bytes()[:5000])
    with pytest.raises(CnnlabError, match="checkpoint.safetensors is damaged"):
        fit(resume=edited, epochs=4, verbose=False)


def test_cli_resume_refuses_other_options(straight_run):
    result = CliRunner().invoke(app, ["train", "--resume", str(straight_run.run_dir), "--epochs", "5",
                                      "--lr", "0.1"])
    assert isinstance(result.exception, CnnlabError)
    assert "--lr 0.1 (the run has 0.002)" in str(result.exception)


def test_resume_with_the_options_the_run_was_started_with_is_accepted(straight_run, tmp_path):
    """A user re-running the same command plus --resume: the same values are no change, nothing is refused."""
    run = tmp_path / "copy"
    import shutil

    shutil.copytree(straight_run.run_dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--data", config["data"], "--epochs", "4",
                                      "--img-size", str(config["img_size"]), "--batch-size", str(config["batch_size"]),
                                      "--model", "simple_cnn", "--model-option", "widths=[8,16]", "--lr", str(config["lr"]),
                                      "--device", "auto", "--precision", "auto", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3, 4]


@pytest.mark.multiprocess  # two training processes (gloo)
def test_two_plus_two_epochs_in_two_processes_equal_four_fp32(tiny_data, tmp_path):
    """The acceptance test: workers > 0, default augmentation, dropout, seed 0, fp32."""
    # onecycle's shape, progressive resizing and the weight average's window depend on --epochs, so a run
    # extended from 2 to 4 epochs continues with another schedule; with all three fixed it must be exact
    common = ["--data", tiny_data, *CLI_TINY, "--batch-size", "8", "--precision", "fp32",
              "--schedule", "constant", "--no-progressive", "--no-ema"]
    straight = _cli(*common, "--epochs", "4", "--out", tmp_path / "four")
    first = _cli(*common, "--epochs", "2", "--out", tmp_path / "two")
    assert _finish(first)[0] == 0
    code, _, err = _finish(_cli("--resume", tmp_path / "two", "--epochs", "4"))
    assert code == 0, err
    assert "resuming" in err and "from the end of epoch 2, to epoch 4" in err
    assert _finish(straight)[0] == 0
    _assert_same_weights(tmp_path / "four", tmp_path / "two", "last.safetensors")
    _assert_same_weights(tmp_path / "four", tmp_path / "two", "best.safetensors")
    assert _without_seconds(read_metrics(tmp_path / "two")) == _without_seconds(read_metrics(tmp_path / "four"))
    config = yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())
    assert (config["epochs"], config["workers"], config["precision"], config["dropout"]) == (4, 2, "fp32", 0.2)


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_is_bit_identical_bf16(tiny_data, tmp_path):
    """SIGTERM exits 143 with a checkpoint and the resume hint; resuming gives the uninterrupted run's bits.
    bf16 (what auto is on CPUs with AVX-512 BF16/AMX; named, so that every CPU tests it: fp32 is the test above)
    and the default onecycle schedule."""
    common = ["--data", tiny_data, *CLI_TINY, "--batch-size", "4", "--epochs", "5", "--precision", "bf16"]
    straight = _cli(*common, "--out", tmp_path / "straight")
    run = tmp_path / "stopped"
    stopped = _cli(*common, "--out", run)
    for line in stopped.stderr:
        if line.startswith("epoch 1/"):
            stopped.send_signal(signal.SIGTERM)
            break
    code, _, err = _finish(stopped)
    assert code == 143, err
    assert f"Continue with: cnnlab train --resume {run}" in err
    assert "Traceback" not in err
    checkpoint = load_training_checkpoint(run)
    assert 1 <= checkpoint.state.epoch < 5

    code, _, err = _finish(_cli("--resume", run))
    assert code == 0, err
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3, 4, 5]
    assert _finish(straight)[0] == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["precision"] == "bf16"
    _assert_same_weights(tmp_path / "straight", run)
    assert _without_seconds(read_metrics(run)) == _without_seconds(read_metrics(tmp_path / "straight"))


def test_ctrl_c_in_a_terminal_signals_the_workers_too_and_still_saves(tiny_data, tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole process group, DataLoader workers included: they must
    not die or speak; the main process finishes its step, saves, and exits 130."""
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--data", str(tiny_data), *CLI_TINY,
                                "--batch-size", "4", "--epochs", "5", "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD,
                               start_new_session=True)  # its own process group, as a shell job has
    for line in process.stderr:
        if line.startswith("epoch 1/"):
            os.killpg(process.pid, signal.SIGINT)
            break
    code, _, err = _finish(process)
    assert code == 130, err
    assert err.count("SIGINT: finishing this step") == 1, err
    assert "Traceback" not in err and "exited unexpectedly" not in err
    assert f"cnnlab train --resume {run}" in err
    assert load_training_checkpoint(run).state.epoch >= 1
