"""Weights on disk survive crashes and full disks, a model file is data, never code, and an official torchvision
state dict loads."""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision
from safetensors.numpy import save_file as save_numpy

from cnnlab.files import TMP_PREFIX, atomic_write, remove_stale_temporaries
from cnnlab.models import create_model
from cnnlab.models.weights import load_start_weights, load_weights, save_weights
from cnnlab.errors import CnnlabError

FORK = multiprocessing.get_context("fork")
VALUES = 1 << 20  # 4 MB per version: big enough that a kill often lands inside a write


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_versions_forever(path: str, first: int) -> None:
    """Child process: write version first, first + 1, ... through atomic_write until killed."""
    version = first
    while True:
        data = {"x": np.full(VALUES, version, dtype=np.float32)}
        atomic_write(path, lambda tmp: save_numpy(data, tmp, metadata={"cnnlab": f'{{"version": {version}}}'}))
        version += 1


def test_kill_9_during_writes_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    rng = random.Random(0)
    seen_versions, rounds_with_temporaries = [], 0
    for round_number in range(6):
        child = FORK.Process(target=_write_versions_forever, args=(str(path), round_number * 1000))
        child.start()
        deadline = time.monotonic() + 60
        while not (path.exists() and load_weights(path)[1]["version"] >= round_number * 1000):
            assert time.monotonic() < deadline, "the writer never finished a first version"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL

        tensors, meta = load_weights(path)  # the last complete version, whole
        version = meta["version"]
        assert round_number * 1000 <= version < (round_number + 1) * 1000
        assert torch.equal(tensors["x"], torch.full((VALUES,), float(version)))
        seen_versions.append(version)
        removed = remove_stale_temporaries(tmp_path)
        rounds_with_temporaries += bool(removed)
        assert all(name.startswith((TMP_PREFIX + path.name, ".tmp")) for name in removed)
        assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    print(f"versions after each kill: {seen_versions}; kills inside a write: {rounds_with_temporaries}/6")


def _save_under_file_size_limit(path: str, limit: int, connection) -> None:
    """Child process: writing more than `limit` bytes fails with EFBIG (as on a full disk)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        save_weights(torch.nn.Linear(256, 256), path)  # 257 KB
        connection.send("saved")
    except CnnlabError as error:
        connection.send(f"CnnlabError: {error}")
    except BaseException as error:  # noqa: BLE001 - report anything else to the test
        connection.send(f"{type(error).__name__}: {error}")


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path):
    path = tmp_path / "last.safetensors"
    small = torch.nn.Linear(4, 2)
    save_weights(small, path, {"epoch": 1})
    receive, send = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_save_under_file_size_limit, args=(str(path), 64 * 1024, send))
    child.start()
    child.join(timeout=120)
    message = receive.recv()
    assert message.startswith("CnnlabError: could not write"), message
    assert str(path) in message and "File too large" in message and "previous version is kept" in message
    tensors, meta = load_weights(path)
    assert meta == {"epoch": 1} and torch.equal(tensors["weight"], small.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


class _Payload:
    """Unpickling this object creates `marker` -- any code could run in its place."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def malicious(tmp_path):
    """(a .pt whose unpickling creates a marker file, that marker's path)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(3, 16), "payload": _Payload(str(marker))}, path)
    # the payload is live: a plain torch.load runs it
    control_marker = tmp_path / "control-ran"
    torch.save({"payload": _Payload(str(control_marker))}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control_marker.exists()
    return path, marker


def test_a_malicious_pickle_is_refused_and_never_runs(malicious):
    path, marker = malicious
    with pytest.raises(CnnlabError, match=f"refused to load {path}: .*never code"):
        load_weights(path)
    assert not marker.exists()


def test_a_malicious_pickle_is_refused_even_when_torch_is_told_to_trust_files(malicious, tiny_data, tmp_path):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes torch.load run pickles unless weights_only=True is explicit."""
    path, marker = malicious
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--data", str(tiny_data), "--weights", str(path),
                             "--img-size", "32", "--model", "simple_cnn", "--model-option", "widths=[8,16]", "--cache", "off",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"refused to load {path}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def _damaged_files(tmp_path) -> dict:
    good_safetensors, good_pt = tmp_path / "good.safetensors", tmp_path / "good.pt"
    save_weights(torch.nn.Linear(64, 32), good_safetensors)
    torch.save(torch.nn.Linear(64, 32).state_dict(), good_pt)
    files = {}
    for name, source in (("safetensors", good_safetensors), ("pt", good_pt)):
        empty, cut = tmp_path / f"empty.{name}", tmp_path / f"cut.{name}"
        empty.write_bytes(b"")
        data = source.read_bytes()
        cut.write_bytes(data[:len(data) // 2])
        files[f"empty.{name}"], files[f"cut.{name}"] = empty, cut
    return files


@pytest.mark.parametrize("name, expected", [("empty.safetensors", "is empty (0 bytes)"),
                                            ("cut.safetensors", "is damaged or not a safetensors file"),
                                            ("empty.pt", "is empty (0 bytes)"),
                                            ("cut.pt", "it is not a plain tensor state dict or it is damaged")])
def test_truncated_and_empty_weight_files_give_a_clear_error(tmp_path, name, expected):
    path = _damaged_files(tmp_path)[name]
    with pytest.raises(CnnlabError) as error:
        load_weights(path)
    assert str(path) in str(error.value) and expected in str(error.value)


def test_an_official_torchvision_state_dict_loads(tmp_path):
    torch.manual_seed(1)
    official = torchvision.models.resnet18(weights=None).state_dict()  # the names and shapes of resnet18-f37072fd.pth
    torch.save(official, tmp_path / "resnet18-f37072fd.pth")
    model = create_model("resnet18", 3)
    note = load_start_weights(model, str(tmp_path / "resnet18-f37072fd.pth"), "resnet18", 3)
    assert "except the classifier (net.fc.1.weight, net.fc.1.bias)" in note and "trained on 1000 classes" in note
    own = model.state_dict()
    assert torch.equal(own["net.conv1.weight"], official["conv1.weight"])
    assert torch.equal(own["net.layer4.1.bn2.running_var"], official["layer4.1.bn2.running_var"])
