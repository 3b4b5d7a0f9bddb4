"""Tiles: window positions cover every pixel with edge tiles shifted inward, random tiles depend on the seed only,
aggregation and heatmaps are the arithmetic they claim, images are decoded at the scale asked,
an image smaller than one tile is one clear line, and an epoch draws the tiles each image holds."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.commands.train import fit
from cnnlab.data.images import read_image, save_image
from cnnlab.data.tiles import (RandomTile, aggregate, check_fits, cut_tiles, heatmap, positions_1d,
                               tile_positions)
from cnnlab.errors import CnnlabError
from conftest import TILED


def test_windows_cover_the_image_and_the_last_one_is_shifted_inward():
    assert positions_1d(100, 32, 16) == [0, 16, 32, 48, 64, 68]  # 68 = 100 - 32: ends at the edge
    assert positions_1d(64, 32, 16) == [0, 16, 32]  # already ends at the edge: nothing added
    assert positions_1d(32, 32, 16) == [0]
    positions = tile_positions(70, 100, 32, overlap=0.5)
    covered = torch.zeros(70, 100, dtype=torch.int32)
    for top, left in positions:
        assert 0 <= top <= 70 - 32 and 0 <= left <= 100 - 32
        covered[top:top + 32, left:left + 32] += 1
    assert covered.min() >= 1  # every pixel is seen, no padding anywhere
    assert len(tile_positions(64, 64, 32, overlap=0.0)) == 4


def test_cut_tiles_are_the_windows():
    image = torch.arange(3 * 8 * 10, dtype=torch.uint8).view(3, 8, 10)
    tiles = cut_tiles(image, [(0, 0), (4, 6)], 4)
    assert tiles.shape == (2, 3, 4, 4)
    assert torch.equal(tiles[1], image[:, 4:8, 6:10])


def test_random_tiles_come_from_the_seed():
    image = torch.randint(0, 255, (3, 50, 60), dtype=torch.uint8)
    crop = RandomTile(16)
    torch.manual_seed(7)
    first = crop(image)
    torch.manual_seed(7)
    assert torch.equal(crop(image), first) and first.shape == (3, 16, 16)
    seen = set()
    for seed in range(50):
        torch.manual_seed(seed)
        tile = crop(image)
        seen.add(tuple(tile[0, 0, :2].tolist()))
    assert len(seen) > 30  # new positions with new seeds
    with pytest.raises(CnnlabError, match="smaller than one 64 px tile"):
        RandomTile(64)(image)


def test_aggregate_and_heatmap_arithmetic():
    logits = torch.tensor([[1.0, 0.0], [3.0, -2.0], [2.0, 5.0]])
    assert aggregate(logits, "mean").tolist() == [2.0, 1.0]
    assert aggregate(logits, "max").tolist() == [3.0, 5.0]
    with pytest.raises(CnnlabError, match="mean or max"):
        aggregate(logits, "median")
    # two 4x4 tiles overlapping by half on an 4x6 image, cells of 2 px: the middle cells average both
    probabilities = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    grid = heatmap(probabilities, [(0, 0), (0, 2)], tile=4, height=4, width=6, cell=2)
    assert grid.shape == (2, 2, 3)
    assert grid[0].tolist() == [[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]]


def test_too_small_images_are_named():
    with pytest.raises(CnnlabError, match=r"b\.jpg is 100x50 px at scale 0\.5, smaller than one 64 px tile"):
        check_fits([(200, 300), (50, 100)], ["a.jpg", "b.jpg"], tile=64, scale=0.5)


def test_images_are_decoded_at_the_scale_asked(tmp_path):
    from .test_images import natural_image

    pixels = torch.from_numpy(natural_image(600, 800, seed=3)).permute(2, 0, 1).contiguous()  # photo-like
    save_image(pixels, tmp_path / "big.png")
    save_image(pixels, tmp_path / "big.jpg")
    half = read_image(tmp_path / "big.png", scale=0.5)
    assert half.shape == (3, 300, 400)
    for scale, shape in ((0.5, (3, 300, 400)), (0.3, (3, 180, 240)), (0.125, (3, 75, 100)), (1.0, (3, 600, 800))):
        assert read_image(tmp_path / "big.jpg", scale=scale).shape == shape
    # the JPEG at 1/2 comes from the DCT-domain reduction: close to a full decode + area resize
    full = read_image(tmp_path / "big.jpg").float()
    area = torch.nn.functional.avg_pool2d(full[None], 2)[0]
    assert (read_image(tmp_path / "big.jpg", scale=0.5).float() - area).abs().mean() < 3


def test_an_epoch_draws_the_tiles_an_image_holds():
    from cnnlab.data.tiles import MAX_DRAWS, tile_draws

    assert tile_draws(48, 48, 48) == 1 and tile_draws(48, 60, 48) == 1  # one tile's area, a little more
    assert tile_draws(750, 750, 256) == 9  # 562,500 / 65,536 = 8.6
    assert tile_draws(256, 512, 256) == 2
    assert tile_draws(6000, 8000, 256) == MAX_DRAWS  # 732 tiles' area: capped


def test_the_epoch_sampler_visits_each_sample_its_draws_with_its_own_seeds():
    from cnnlab.data.loaders import EpochSampler

    once = list(EpochSampler(5, seed=3))
    assert list(EpochSampler(5, seed=3, draws=torch.ones(5, dtype=torch.long))) == once  # the same epoch as before
    draws = torch.tensor([1, 3, 2, 1, 4])
    sampler = EpochSampler(5, seed=3, draws=draws)
    visits = list(sampler)
    assert sampler.total == 11 and len(visits) == 11
    assert [sum(1 for index, _ in visits if index == k) for k in range(5)] == draws.tolist()
    assert len({seed for _, seed in visits}) == 11  # every visit its own tile
    sampler.skip = {1}  # an unreadable image leaves with all its visits
    assert sorted({index for index, _ in sampler}) == [0, 2, 3, 4] and len(list(sampler)) == 8
    shares = [list(EpochSampler(5, seed=3, rank=r, world_size=2, draws=draws, batch_size=2)) for r in (0, 1)]
    # two ranks split the same visits (the last one dropped: a global batch of 2 must give both ranks one)
    assert sorted(shares[0] + shares[1]) == sorted(visits[:10])


def test_tiles_that_do_not_fit_are_one_clear_line(objects, tmp_path):
    with pytest.raises(CnnlabError, match=r"is 64x64 px at scale 0.125, smaller than one 96 px tile; use a smaller "
                                          r"--tile, a larger --scale"):
        fit(data=str(objects), epochs=1, out=str(tmp_path / "r"), **(TILED | {"tile": 96, "scale": 0.125}))
    result = CliRunner().invoke(app, ["train", "--data", str(objects), "--tile", "96", "--scale", "0.125",
                                      "--out", str(tmp_path / "r2")])
    assert isinstance(result.exception, CnnlabError)


def test_an_epoch_covers_every_image_once(objects, tmp_path):
    from cnnlab.config import TrainConfig
    from cnnlab.data.loaders import samples_per_epoch
    from cnnlab.training.setup import prepare

    options = {k: v for k, v in TILED.items() if k != "verbose"}
    run = prepare(TrainConfig(data=str(objects), epochs=1, out=str(tmp_path / "run"), **options), verbose=False)
    # 12 training images of 512 px at scale 0.5: 256 x 256 px, the area of round(65,536 / 48^2) = 28 tiles each
    assert len(run.splits.splits["train"]) == 12
    assert samples_per_epoch(run.train_loader) == 12 * 28
    assert len(run.train_loader) == 12 * 28 // 8
