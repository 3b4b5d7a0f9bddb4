"""Unreadable images in training: skipped with one warning line per file (not one per epoch or worker),
counted in dataset.json and the summary; too many of them stop the run with an error naming the split."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cnnlab.data.folders import find_samples
from cnnlab.errors import CnnlabError
from cnnlab.commands.evaluate import evaluate
from cnnlab.data.loaders import EpochSampler
from cnnlab.commands.train import fit

TINY = {"model": "simple_cnn", "img_size": 32, "batch_size": 8, "model_options": {"widths": [8, 16]}, "cache": "off", "verbose": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _copy_with_truncated(tiny_data, tmp_path, count: int, split: str = "train") -> tuple:
    """A copy of tiny_data with `count` of its `split` JPEGs cut in half; returns (root, broken paths)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    files = sorted((root / split).rglob("*.jpg"))[::3][:count]  # spread over the classes
    for path in files:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    return root, [str(p) for p in files]


def _read_by_two_workers(root) -> str:
    """A training file that DataLoader worker 0 reads in epoch 1 and worker 1 in epoch 2 (batch 8, seed 0):
    without the main process remembering it, both would warn about it."""
    samples = find_samples(root).splits["train"]

    def batch_of(index: int, epoch: int) -> int:
        sampler = EpochSampler(len(samples), seed=0)
        sampler.set_epoch(epoch)
        return [i for i, _ in sampler].index(index) // 8  # batches go to the workers in turn

    return next(s.path for i, s in enumerate(samples) if batch_of(i, 1) % 2 != batch_of(i, 2) % 2)


def test_one_truncated_jpeg_is_skipped_once_and_reported(tiny_data, tmp_path, capfd):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    broken = _read_by_two_workers(root)  # 1 of 36 training images
    with open(broken, "r+b") as handle:
        handle.truncate(len(handle.read()) // 2)
    result = fit(data=str(root), epochs=3, workers=2, out=str(tmp_path / "run"), **TINY)
    err = capfd.readouterr().err  # fd-level: the warnings come from the DataLoader worker processes
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipping")]
    # once, although 3 epochs x 2 workers could each have read it
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: skipping {broken}: corrupt or truncated"), err
    assert len(result.history) == 3
    assert result.unreadable == {"train": 1}
    assert "skipped unreadable images: 1 in train" in result.summary()
    dataset = json.loads((result.run_dir / "dataset.json").read_text())
    assert dataset["unreadable"] == {"train": [{"path": broken, "reason": dataset["unreadable"]["train"][0]["reason"]}]}
    assert "truncated" in dataset["unreadable"]["train"][0]["reason"]


def test_evaluate_skips_an_unreadable_val_image(tiny_data, tmp_path, capfd):
    root, (broken,) = _copy_with_truncated(tiny_data, tmp_path, 1, split="val")
    run = fit(data=str(root), epochs=1, workers=0, out=str(tmp_path / "run"), max_bad=0.1, **TINY)
    assert run.unreadable == {"val": 1}
    capfd.readouterr()
    result = evaluate(run.run_dir, split="val", workers=0, verbose=False)
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: skipping")]
    assert len(warnings) == 1 and broken in warnings[0]
    saved = json.loads((run.run_dir / "eval_val.json").read_text())
    assert saved["images"] == 11  # 12 val images, one unreadable
    assert result.accuracy == pytest.approx(saved["accuracy"])
    # 1 of 12 (8 %) is over a 5 % limit: a clear error naming the split and the count
    with pytest.raises(CnnlabError, match=r"1 of 12 images in the val split are unreadable"):
        evaluate(run.run_dir, split="val", workers=0, max_bad=0.05, verbose=False)


@pytest.mark.parametrize("cache", ["off", "ram"])
def test_too_many_unreadable_images_stop_with_the_split_and_count(tiny_data, tmp_path, cache):
    root, broken = _copy_with_truncated(tiny_data, tmp_path, 11)  # 11 of 36 = 31 %
    with pytest.raises(CnnlabError, match=r"unreadable images among the 36 of the train split") as error:
        fit(data=str(root), epochs=2, workers=0, out=str(tmp_path / "run"), **(TINY | {"cache": cache}))
    message = str(error.value)
    assert "more than --max-bad 0.05" in message and "cnnlab data check" in message
    found = int(message.split("found ")[1].split(" ")[0])
    # without a cache the run stops at the first batch that passes 5 % (2 files); a cache knows all 11 up front
    assert found == 11 if cache == "ram" else 2 <= found < 11
    assert any(path in message for path in broken)
