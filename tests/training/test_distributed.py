"""Several processes (torchrun, gloo on the CPU): the same global batches as one process, the same weights within
float round-off, every validation image counted once, one run folder, a group SIGTERM ends in a checkpoint and the
resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.data.loaders import EpochSampler, ShardIndices
from cnnlab.runs.reader import read_metrics

# The equivalence run: an MLP without dropout (no BatchNorm, whose batch statistics are per process, and no
# dropout, whose masks are drawn per process), so one process and two must reach the same weights; in fp32, whose
# round-off the tolerance below is for (auto is bf16 on a CPU with AVX-512 BF16/AMX: 8 bits of mantissa).
COMMON = ["--model", "mlp", "--img-size", "32", "--batch-size", "8", "--dropout", "0", "--cache", "off",
          "--workers", "0", "--precision", "fp32"]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def cnnlab(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "cnnlab", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600, **kwargs)


def test_the_ranks_share_one_permutation_into_the_same_global_batches():
    batch, world = 8, 2
    single = EpochSampler(45, seed=3, batch_size=batch)
    single.set_epoch(2)
    items = list(single)
    global_batches = [items[k:k + batch] for k in range(0, len(items), batch)]
    shards = []
    for rank in range(world):
        sampler = EpochSampler(45, seed=3, rank=rank, world_size=world, batch_size=batch)
        sampler.set_epoch(2)
        mine = list(sampler)
        shards.append([mine[k:k + batch // world] for k in range(0, len(mine), batch // world)])
    assert len(shards[0]) == len(shards[1])  # the same number of steps on every process
    for k, (a, b) in enumerate(zip(*shards)):
        assert sorted(a + b) == sorted(global_batches[k])  # the k-th global batch, split between the two
    # 45 = 5 x 8 + 5: the last global batch of 5 is shared 3 + 2; a last batch of 1 (41 images) is dropped
    # with two processes (one of them would have nothing to train on) and kept with one
    assert len(shards[0]) == 6
    odd = [list(EpochSampler(41, seed=0, rank=r, world_size=2, batch_size=8)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 20 and len(list(EpochSampler(41, seed=0, batch_size=8))) == 41
    # files left out (unreadable) are left out before the ranks share the order
    for rank in (0, 1):
        sampler = EpochSampler(45, seed=3, rank=rank, world_size=2, batch_size=8)
        sampler.skip = {0, 1, 2}
        assert not {i for i, _ in sampler} & {0, 1, 2}
    val = [list(ShardIndices(11, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(val[0] + val[1]) == list(range(11))  # every validation image exactly once


@pytest.mark.multiprocess
def test_two_processes_reach_the_weights_of_one(tiny_data, tmp_path):
    one = cnnlab("train", "--data", tiny_data, *COMMON, "--epochs", "2", "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = cnnlab("train", "--data", tiny_data, *COMMON, "--epochs", "2", "--nproc", "2", "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    # The same global batches and loss: only the order of the float32 sums differs (the gradient all-reduce
    # adds two halves). Measured: 3e-7 at most on weights of about 3e-2; 1e-5 leaves room, while a wrong
    # batch, scale or normaliser moves weights by 1e-3 and more after a step at lr 2e-3.
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
    assert [r["train_loss"] for r in read_metrics(tmp_path / "one")] == \
        pytest.approx([r["train_loss"] for r in read_metrics(tmp_path / "two")], rel=1e-4)
    evaluation = json.loads((tmp_path / "two" / "eval_val.json").read_text())
    assert evaluation["images"] == 12  # each validation image scored once, by one of the processes
    assert two.stdout.count("run folder:") == 1  # one process reports
    assert len(read_metrics(tmp_path / "two")) == 2  # and writes the run folder, once


@pytest.mark.multiprocess
def test_a_group_sigterm_checkpoints_and_the_resumed_run_ends_as_an_uninterrupted_one(tiny_data, tmp_path):
    args = ["--data", tiny_data, "--model", "simple_cnn", "--model-option", "widths=[8,16]", "--img-size", "32",
            "--batch-size", "4", "--cache", "off", "--workers", "0", "--epochs", "4", "--nproc", "2"]
    straight = cnnlab("train", *args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    process = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *map(str, args), "--out", tmp_path / "cut"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               start_new_session=True)  # its own process group, as a job runner makes it
    metrics = tmp_path / "cut" / "metrics.csv"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)  # until epoch 1 is written: the signal lands in epoch 2
    os.killpg(process.pid, signal.SIGTERM)  # what systemd, Slurm and `timeout` do
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err
    assert "Traceback" not in err and err.count("the checkpoint is in") == 1
    resumed = cnnlab("train", "--resume", tmp_path / "cut", "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(tmp_path / "straight" / "last.safetensors")), load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert all(torch.equal(a[name], b[name]) for name in a)  # as many processes: bit for bit


@pytest.mark.multiprocess
def test_timeout_on_one_process_ends_with_a_checkpoint(tiny_data, tmp_path):
    """`timeout` signals the whole process group (workers included); its own exit status is 124 unless asked to
    pass the child's on. `timeout` relays a TERM it receives exactly as when its time runs out, so the test sends
    it one once training has started, instead of guessing how long start-up takes on a busy machine."""
    process = subprocess.Popen(["timeout", "--preserve-status", "-s", "TERM", "600", sys.executable, "-m", "cnnlab",
                                "train", "--data", str(tiny_data), "--model", "simple_cnn", "--model-option",
                                "widths=[8,16]", "--img-size", "32", "--batch-size", "4", "--epochs", "500",
                                "--out", str(tmp_path / "run"), "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("epoch 1/"):
            process.send_signal(signal.SIGTERM)  # to `timeout`, which signals its process group
            break
    _, err = process.communicate(timeout=300)
    err = "".join(lines) + err
    assert process.returncode == 143, err
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()


@pytest.mark.multiprocess
def test_clear_errors(tiny_data, tmp_path):
    too_many = cnnlab("train", "--data", tiny_data, "--nproc", "64", "--out", tmp_path / "r")
    assert too_many.returncode == 2 and "--nproc 64 is more than the" in too_many.stderr
    odd = cnnlab("train", "--data", tiny_data, *COMMON[:6], "--nproc", "2", "--batch-size", "7", "--out",
                 tmp_path / "r2")
    assert odd.returncode == 2 and "make it a multiple of 2" in odd.stderr
    assert odd.stderr.count("error:") == 1  # rank 0 speaks for both
