"""Folder scanning, split determinism and stratification, reproducible augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample, find_samples, stratified_split
from cnnlab.errors import CnnlabError
from cnnlab.data.images import save_image
from cnnlab.data.loaders import EpochSampler
from cnnlab.data.transforms import Preprocessing, normalize, train_transform


def _make_folder(root, counts: dict[str, int], size=(20, 30)):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        for i in range(n):
            save_image(rng.integers(0, 255, (*size, 3), dtype=np.uint8), root / name / f"{name}_{i:03d}.png")
    return root


def test_flat_folder_gets_deterministic_stratified_split(tmp_path):
    _make_folder(tmp_path, {"cat": 20, "dog": 10, "fox": 5})
    first = find_samples(tmp_path, val_fraction=0.2, seed=3)
    again = find_samples(tmp_path, val_fraction=0.2, seed=3)
    other = find_samples(tmp_path, val_fraction=0.2, seed=4)
    assert first.classes == ["cat", "dog", "fox"]
    assert first.splits == again.splits
    assert first.splits["val"] != other.splits["val"]
    assert first.counts()["val"] == {"cat": 4, "dog": 2, "fox": 1}
    assert first.counts()["train"] == {"cat": 16, "dog": 8, "fox": 4}
    train_paths = {s.path for s in first.splits["train"]}
    assert not train_paths & {s.path for s in first.splits["val"]}


def test_split_folders_are_used_and_validation_is_an_alias(tmp_path):
    _make_folder(tmp_path / "train", {"a": 3, "b": 3})
    _make_folder(tmp_path / "validation", {"a": 1, "b": 2})
    _make_folder(tmp_path / "test", {"a": 1, "b": 1})
    found = find_samples(tmp_path)
    assert list(found.splits) == ["train", "val", "test"]
    assert found.counts() == {"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 2}, "test": {"a": 1, "b": 1}}
    assert found.split_source == "folders"


def test_hidden_folders_and_files_are_ignored(tmp_path):
    _make_folder(tmp_path, {"a": 2, "b": 2, ".ipynb_checkpoints": 2})
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0")
    found = find_samples(tmp_path)
    assert found.classes == ["a", "b"]
    assert sum(len(v) for v in found.splits.values()) == 4


def test_symlink_loop_does_not_multiply_samples(tmp_path):
    _make_folder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a")
    found = find_samples(tmp_path, val_fraction=0.34)
    assert sum(found.counts()["train"].values()) + sum(found.counts()["val"].values()) == 6


def test_stratified_split_keeps_one_image_each_side():
    samples = [Sample(f"x{i}", 0) for i in range(2)] + [Sample(f"y{i}", 1) for i in range(9)]
    train, val = stratified_split(samples, 0.2, seed=0)
    assert sorted(s.label for s in val) == [0, 1, 1]
    assert len(train) == 8


@pytest.mark.parametrize("layout,message", [
    ({"only": 3}, "at least two"),
    ({}, "at least two"),
])
def test_too_few_classes_is_a_clear_error(tmp_path, layout, message):
    _make_folder(tmp_path, layout)
    with pytest.raises(CnnlabError, match=message):
        find_samples(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CnnlabError, match="does not exist"):
        find_samples(tmp_path / "nope")


def test_augmentation_is_random_per_read_but_reproducible_per_seed(tiny_data):
    found = find_samples(tiny_data)
    dataset = ImageDataset(found.splits["train"][:1], train_transform("default", 32), 37)
    a1, _, _, seed = dataset[(0, 11)]
    a2, _, _, _ = dataset[(0, 11)]
    b, _, _, _ = dataset[(0, 12)]
    assert a1.shape == (3, 32, 32) and a1.dtype == torch.uint8 and seed == 11
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, b)
    # the caller's RNG is not disturbed by the seeded transform
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    dataset[(0, 99)]
    assert torch.equal(torch.rand(3), expected)


def test_eval_transform_is_deterministic_resize_and_center_crop():
    image = torch.zeros(3, 60, 90, dtype=torch.uint8)
    image[:, :, 45:] = 255  # right half white
    out = Preprocessing.for_size(32).eval_transform()(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, Preprocessing.for_size(32).eval_transform()(image))
    # normalised on the device: the left columns are black (-mean/std), the right ones white
    normalised = normalize(out[None])[0]
    assert normalised[0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-4)
    assert normalised[0, 0, -1].item() == pytest.approx((1 - 0.485) / 0.229, abs=1e-4)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    sampler = EpochSampler(10, seed=1)
    sampler.set_epoch(3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10))
    again = EpochSampler(10, seed=1)
    again.set_epoch(3)
    assert list(again) == first
    again.set_epoch(4)
    assert list(again) != first
    shards = [list(EpochSampler(10, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    for s in shards:
        pass
    sampler_r = [EpochSampler(10, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in sampler_r:
        s.set_epoch(3)
    assert sorted(list(sampler_r[0]) + list(sampler_r[1])) == sorted(first)


def test_link_to_parent_does_not_leak_other_classes(tmp_path):
    _make_folder(tmp_path / "train", {"cat": 2, "dog": 3})
    (tmp_path / "train" / "cat" / "loop").symlink_to("..")
    found = find_samples(tmp_path, val_fraction=0.5)
    cat_paths = [s.path for split in found.splits.values() for s in split if s.label == 0]
    assert len(cat_paths) == 2 and not any("dog" in p for p in cat_paths)
