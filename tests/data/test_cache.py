"""The resolution cache: built once, reused, never stale, same pixels as decoding, safe fallbacks; its stores
listed and cleared (`cnnlab cache list|clear`)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.transforms.v2 import functional as F
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.data import cache as cache_module
from cnnlab.data.cache import choose_mode, open_cache
from cnnlab.data.dataset import ImageDataset
from cnnlab.data.folders import Sample
from cnnlab.errors import CnnlabError
from cnnlab.data.images import read_at, read_image, save_image
from cnnlab.data.loaders import make_loader, skip_sampler
from cnnlab.data.transforms import train_transform

SIZE = 64  # short side cached


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache root (never the user's)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(root))
    return root


def _photo(seed: int, height: int, width: int) -> np.ndarray:
    """Smooth colour field + grain: (H, W, 3) uint8 that JPEG compresses like a photo."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (3, 6, 8)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse[None], size=(height, width), mode="bicubic")[0]
    pixels = smooth + torch.from_numpy(rng.normal(0, 8, (1, height, width)).astype(np.float32))
    return pixels.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture
def folder(tmp_path) -> Path:
    """A few JPEGs and a PNG of mixed sizes, one smaller than SIZE."""
    root = tmp_path / "photos"
    sizes = [(300, 400), (240, 160), (130, 130), (90, 200), (40, 50)]
    for i, (height, width) in enumerate(sizes):
        save_image(_photo(i, height, width), root / f"img{i}.jpg")
    save_image(_photo(9, 150, 100), root / "img9.png")
    return root


def _paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


def _expected(path: str, size: int = SIZE) -> torch.Tensor:
    """What the cache must hold: read_image reduced to short side `size` by the transforms' resize."""
    image = read_image(path, min_size=size)
    return F.resize(image, [size], antialias=True) if min(image.shape[1:]) > size else image


def _count_decodes(monkeypatch) -> list[str]:
    calls: list[str] = []

    def counting_read_at(path, *args, **kwargs):
        calls.append(str(path))
        return read_at(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "read_at", counting_read_at)
    return calls


def test_built_once_then_reused_without_decoding(folder, monkeypatch):
    calls = _count_decodes(monkeypatch)
    paths = _paths(folder)
    first = open_cache(paths, SIZE, "disk", verbose=False)
    assert len(calls) == len(paths) == 6
    assert first.stats["decoded"] == 6 and first.stats["reused"] == 0

    calls.clear()
    second = open_cache(paths, SIZE, "disk", verbose=False)
    assert calls == []
    assert second.stats["decoded"] == 0 and second.stats["reused"] == 6
    assert second.location == first.location
    for i in range(len(paths)):
        assert torch.equal(second.load(i), first.load(i))


def test_pixels_equal_read_image_plus_resize(folder):
    paths = _paths(folder)
    cached = open_cache(paths, SIZE, "disk", verbose=False)
    for i, path in enumerate(paths):
        image = cached.load(i)
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        # short side SIZE, or the file's own when it is smaller (40x50 stays 40x50)
        assert min(image.shape[1:]) == min(SIZE, *read_image(path).shape[1:])
        assert torch.equal(image, _expected(path))
        # and close to a full-resolution decode resized once (the DCT reduction is not exact)
        full = F.resize(read_image(path), list(image.shape[1:]), antialias=True)
        assert (image.float() - full.float()).abs().mean() < 3.0


def test_changed_added_and_removed_files_are_never_served_stale(folder, monkeypatch):
    paths = _paths(folder)
    open_cache(paths, SIZE, "disk", verbose=False)
    changed, removed = paths[0], paths[1]
    old_pixels = _expected(changed)
    save_image(_photo(100, 300, 400), changed)  # same size, new content
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    os.remove(removed)
    added = str(folder / "new.jpg")
    save_image(_photo(101, 120, 180), added)
    current = sorted(set(paths) - {removed} | {added})

    calls = _count_decodes(monkeypatch)
    cached = open_cache(current, SIZE, "disk", verbose=False)
    assert sorted(calls) == sorted([changed, added])
    assert cached.stats["decoded"] == 2 and cached.stats["reused"] == 4
    for i, path in enumerate(current):
        assert torch.equal(cached.load(i), _expected(path)), path
    assert not torch.equal(cached.load(current.index(changed)), old_pixels)
    index = json.loads((Path(cached.location) / "index.json").read_text())
    assert removed not in index["entries"] and added in index["entries"]


def test_store_is_compacted_when_mostly_dead(folder):
    paths = _paths(folder)
    first = open_cache(paths, SIZE, "disk", verbose=False)
    big = paths[0]  # 300x400: the largest image, over half of the store
    live_before = first.stats["bytes"]
    for path in paths[1:]:
        os.remove(path)
    # nothing to update: the dead entries stay (never served) until the next update
    assert open_cache([big], SIZE, "disk", verbose=False).stats["decoded"] == 0
    small = str(folder / "small.jpg")
    save_image(_photo(7, 20, 30), small)  # stored as it is: 20x30
    cached = open_cache([big, small], SIZE, "disk", verbose=False)
    index = json.loads((Path(cached.location) / "index.json").read_text())
    assert sorted(index["entries"]) == sorted([big, small])
    assert index["pixels"] == "pixels-2.u8" and not (Path(cached.location) / "pixels-1.u8").exists()
    assert index["end"] == 3 * SIZE * round(SIZE * 400 / 300) + 3 * 20 * 30 < live_before
    assert torch.equal(cached.load(0), _expected(big)) and torch.equal(cached.load(1), _expected(small))


def test_unreadable_files_are_recorded_and_skipped_with_one_warning(folder, monkeypatch, capsys):
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "empty.jpg").write_bytes(b"")
    paths = _paths(folder)
    cached = open_cache(paths, SIZE, "disk", verbose=False)
    problems = {cached.paths[i]: problem for i, (problem, _) in cached.problems.items()}
    assert problems == {str(folder / "broken.jpg"): "truncated-or-corrupt",
                        str(folder / "empty.jpg"): "empty-file"}

    calls = _count_decodes(monkeypatch)
    again = open_cache(paths, SIZE, "disk", verbose=False)
    assert calls == [] and len(again.problems) == 2  # the verdict is cached too
    samples = [Sample(p, 0) for p in paths]
    dataset = ImageDataset(samples, train_transform("none", 32), 37, source=again)
    broken = paths.index(str(folder / "broken.jpg"))
    assert dataset[broken] is None and dataset[broken] is None
    assert capsys.readouterr().err.count("broken.jpg") == 1
    assert dataset[paths.index(str(folder / "img0.jpg"))][0].shape == (3, 32, 32)


def test_pixel_cap_is_respected_and_keys_the_store(folder):
    paths = _paths(folder)
    capped = open_cache(paths, SIZE, "disk", max_pixels=200 * 200, verbose=False)
    over = {capped.paths[i] for i, (problem, _) in capped.problems.items() if problem == "over-pixel-cap"}
    assert over == {str(folder / "img0.jpg")}  # 300x400 = 120k pixels > 40k
    uncapped = open_cache(paths, SIZE, "disk", verbose=False)
    assert uncapped.location != capped.location and not uncapped.problems


def test_unwritable_cache_dir_falls_back_and_training_still_works(tiny_data, tmp_path, capsys):
    from cnnlab.commands.train import fit

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert open_cache(_paths(tiny_data / "val" / "circle"), SIZE, "disk", cache_dir=str(blocker / "cache"),
                      verbose=False) is None
    assert capsys.readouterr().err.count("warning: cannot use the image cache") == 1
    result = fit(data=str(tiny_data), img_size=32, epochs=1, batch_size=8, workers=0, out=str(tmp_path / "run"),
                 model="simple_cnn", model_options={"widths": [8, 16]}, cache="disk", cache_dir=str(blocker / "cache"), verbose=False)
    assert result.history[0]["epoch"] == 1 and np.isfinite(result.history[0]["train_loss"])
    assert "cannot use the image cache" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["cache"] == "off"


def test_disk_full_falls_back_to_no_cache(folder, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_append", no_space)
    assert open_cache(_paths(folder), SIZE, "disk", verbose=False) is None
    assert "No space left on device" in capsys.readouterr().err


def test_ram_cache_equals_disk_cache(folder):
    paths = _paths(folder)
    ram = open_cache(paths, SIZE, "ram", verbose=False)
    disk = open_cache(paths, SIZE, "disk", verbose=False)
    assert ram.mode == "ram" and disk.mode == "disk"
    for i in range(len(paths)):
        assert torch.equal(ram.load(i), disk.load(i))


def test_auto_chooses_disk_then_ram_then_off(monkeypatch, tmp_path):
    need = cache_module.estimate_bytes(["x.jpg"] * 1000, 256)  # ~262 MB of decoded images
    monkeypatch.setattr(cache_module, "_free_disk", lambda root: 10 * need)
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10 * need)
    assert choose_mode(["x.jpg"] * 1000, 256, tmp_path)[0] == "disk"
    monkeypatch.setattr(cache_module, "_free_disk", lambda root: need)
    assert choose_mode(["x.jpg"] * 1000, 256, tmp_path)[0] == "ram"
    monkeypatch.setattr(cache_module, "available_memory", lambda: need)
    assert choose_mode(["x.jpg"] * 1000, 256, tmp_path)[0] == "off"


def test_one_pass_commands_only_reuse_an_existing_store(folder):
    paths = _paths(folder)
    assert open_cache(paths, SIZE, "auto", one_pass=True, verbose=False) is None
    assert open_cache(paths, SIZE, "ram", one_pass=True, verbose=False) is None
    built = open_cache(paths, SIZE, "disk", verbose=False)
    # a sub-list of files in a sub-folder finds the store of the folder above
    sub = open_cache(paths[:2], SIZE, "auto", one_pass=True, verbose=False)
    assert sub is not None and sub.location == built.location and sub.stats["decoded"] == 0


def test_select_refuses_a_file_outside_the_cache(folder):
    cached = open_cache(_paths(folder), SIZE, "disk", verbose=False)
    with pytest.raises(CnnlabError, match="not in the image cache"):
        cached.select([str(folder / "elsewhere.jpg")])


def test_pool_build_and_two_dataloader_workers_give_the_same_batches(tmp_path):
    root = tmp_path / "many"
    for i in range(24):  # over POOL_MIN_FILES: built by the process pool
        save_image(_photo(i, 100 + 7 * i, 150), root / f"{i:02d}.jpg")
    paths = _paths(root)
    cached = open_cache(paths, SIZE, "disk", verbose=False)
    assert cached.stats["decoded"] == 24
    for i in (0, 11, 23):
        assert torch.equal(cached.load(i), _expected(paths[i]))

    samples = [Sample(p, i % 3) for i, p in enumerate(paths)]
    transform = train_transform("default", 56)

    def batches(source, workers):
        dataset = ImageDataset(samples, transform, SIZE, source=source)
        loader = make_loader(dataset, 8, workers, train=True, seed=3)
        skip_sampler(loader).set_epoch(1)
        return [(batch.images, batch.labels) for batch in loader]

    from_files = batches(None, 0)
    from_cache = batches(cached.select(paths), 2)
    assert len(from_cache) == 3
    for (images_a, labels_a), (images_b, labels_b) in zip(from_files, from_cache):
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(images_a, images_b)  # same pixels, same per-sample seeds


def test_training_with_the_cache_equals_training_without(tiny_data, tmp_path):
    from cnnlab.commands.evaluate import evaluate
    from cnnlab.commands.predict import predict
    from cnnlab.commands.train import fit

    common = dict(data=str(tiny_data), img_size=32, epochs=1, batch_size=8, workers=0,
                  model="simple_cnn", model_options={"widths": [8, 16]}, verbose=False)
    plain = fit(out=str(tmp_path / "off"), cache="off", **common)
    cached = fit(out=str(tmp_path / "disk"), cache="auto", **common)
    assert cached.history[0]["train_loss"] == plain.history[0]["train_loss"]
    assert cached.history[0]["train_acc"] == plain.history[0]["train_acc"]
    # validation resizes twice with the cache (to 37, then 32): close, not bit-identical
    assert abs(cached.history[0]["val_loss"] - plain.history[0]["val_loss"]) < 0.02
    assert yaml.safe_load((tmp_path / "disk" / "config.yaml").read_text())["cache"] == "disk"

    store = next((Path(os.environ["CNNLAB_CACHE"]) / "images").iterdir())
    before = (store / "index.json").stat().st_mtime_ns
    result = evaluate(tmp_path / "disk", workers=0, verbose=False)
    assert len(result.labels) == 12
    from_cache = predict(tmp_path / "disk", [tiny_data / "val"])  # a sub-folder finds the data's store
    from_files = predict(tmp_path / "disk", [tiny_data / "val"], cache="off")
    assert (store / "index.json").stat().st_mtime_ns == before  # read, not rebuilt
    assert [r["path"] for r in from_cache] == [r["path"] for r in from_files] and len(from_cache) == 12
    for cached_row, file_row in zip(from_cache, from_files):
        probabilities = {t["class"]: t["probability"] for t in file_row["top"]}
        for top in cached_row["top"]:
            assert abs(top["probability"] - probabilities[top["class"]]) < 0.05


def test_cache_list_and_clear(tiny_data, tmp_path):
    from cnnlab.data.cache import open_cache
    from cnnlab.data.folders import find_images

    open_cache(find_images(tiny_data), 37, "disk", cache_dir=str(tmp_path / "cache"), verbose=False)
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--cache-dir", str(tmp_path / "cache")])
    assert listed.exit_code == 0 and "1 store(s)" in listed.output and "48 images at short side 37" in listed.output
    name = next((tmp_path / "cache").iterdir()).name
    assert name in listed.output
    bad = runner.invoke(app, ["cache", "clear", "nope", "--cache-dir", str(tmp_path / "cache")])
    assert isinstance(bad.exception, CnnlabError) and "no image store named nope" in str(bad.exception)
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path / "cache")])
    assert cleared.exit_code == 0 and "deleted 1 store(s)" in cleared.output
    assert not any((tmp_path / "cache").iterdir())
