"""Image-level training over tiles (--aggregate attention): Iterative Patch Selection's step (which tiles it scores,
keeps and trains on), and a bag run end to end on a tiny objects set: trained, recorded, predicted and evaluated
from its folder with the numbers computed by hand, and the errors for what cannot work."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from cnnlab.commands.evaluate import evaluate
from cnnlab.commands.export import export
from cnnlab.commands.predict import predict
from cnnlab.commands.train import fit
from cnnlab.config import TrainConfig
from cnnlab.data.bags import BagBatch, grid
from cnnlab.data.folders import Sample
from cnnlab.data.images import image_size
from cnnlab.data.tiles import cut_tiles, tile_positions
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.runs.explain import explain_image
from cnnlab.runs.inference import open_trained
from cnnlab.training.bags import GRID_STREAM, BagInputs, stream_seed
from cnnlab.training.device import resolve_precision
from cnnlab.training.forward import InputPipeline, window_logits

CPU = torch.device("cpu")
# 128 px images at scale 0.25 (the 512 px files) cut into 32 px tiles: bags of 16 tiles, 4 kept per step
BAG = {"model": "simple_cnn", "model_options": {"widths": [8, 16]}, "tile": 32, "scale": 0.25,
       "aggregate": "attention", "bag_tiles": 4, "batch_size": 2, "workers": 0, "cache": "off", "precision": "fp32",
       "verbose": False}


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """2 classes x 6 images of 512 px with small shapes."""
    from cnnlab.data.synth import synthesize

    root = tmp_path_factory.mktemp("objects") / "objects"
    synthesize(root, classes=2, per_class=6, size=512, seed=0, val_fraction=0.34, kind="objects")
    return root


@pytest.fixture(scope="module")
def bag_run(objects, tmp_path_factory):
    # the second epoch selects by attention (the first, the warm-up, draws tiles at random)
    return fit(data=str(objects), epochs=2, bag_warmup=1, out=str(tmp_path_factory.mktemp("bags") / "run"), **BAG)


def encoder_calls(model) -> list[tuple[bool, int]]:
    """(gradients enabled, tiles) of every pass through the tile encoder's convolutions, appended as they happen."""
    calls = []
    model.encoder.stages.register_forward_hook(lambda module, args, output: calls.append((torch.is_grad_enabled(),
                                                                                   args[0].shape[0])))
    return calls


def bag_setup(keep: int, warmup: int = 0, score_batch: int = 5):
    torch.manual_seed(0)
    model = create_model("simple_cnn", 2, bag=True, widths=[4, 8]).train()
    pipeline = InputPipeline(CPU, resolve_precision("fp32", CPU))  # no augmentation: tiles as they were cut
    return model, pipeline, BagInputs(pipeline, tile=32, overlap=0.0, keep=keep, score_batch=score_batch,
                                      warmup=warmup)


def two_images(sizes=((96, 128), (64, 64)), seeds=(11, 12)) -> BagBatch:
    generator = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]
    return BagBatch(images, torch.tensor([0, 1]), torch.arange(len(images)), torch.tensor(seeds))


def test_the_training_grid_covers_every_pixel_and_moves_with_the_seed():
    assert grid(100, 70, 32, 0.0) == tile_positions(100, 70, 32, 0.0)
    offsets = set()
    for seed in range(20):
        positions = grid(100, 70, 32, 0.0, seed)
        covered = torch.zeros(100, 70, dtype=torch.bool)
        for top, left in positions:
            assert 0 <= top <= 100 - 32 and 0 <= left <= 70 - 32
            covered[top:top + 32, left:left + 32] = True
        assert covered.all()
        offsets.add(tuple(positions))
    assert len(offsets) > 5  # the grid moves from epoch to epoch: a border cuts other objects each time


def test_ips_keeps_exactly_the_top_m_scored_tiles_and_restores_training_mode():
    model, pipeline, inputs = bag_setup(keep=3)
    batch = two_images()
    kept = inputs.select(model, batch, epoch=1)
    assert model.training and all(module.training for module in model.modules())
    model.eval()
    for image, seed, chosen in zip(batch.images, batch.seeds.tolist(), kept):
        positions = grid(image.shape[1], image.shape[2], 32, 0.0, stream_seed(seed, GRID_STREAM))
        assert len(positions) > 3
        with torch.no_grad():
            scores = model.scores(pipeline(cut_tiles(image, positions, 32)))  # every tile, by hand
        best = scores.argsort(descending=True)[:3].tolist()
        assert chosen == [positions[k] for k in best]


def test_gradients_flow_only_through_the_m_kept_tiles():
    """The scoring pass sees every tile without gradients (a chunk of score_batch at a time); the step with
    gradients encodes only B x M tiles, and they are the kept ones."""
    model, pipeline, inputs = bag_setup(keep=3, score_batch=5)
    calls = encoder_calls(model)
    batch = two_images()
    kept = inputs.select(model, batch, epoch=1)
    n_tiles = sum(len(grid(im.shape[1], im.shape[2], 32, 0.0, stream_seed(int(s), GRID_STREAM)))
                  for im, s in zip(batch.images, batch.seeds))
    assert [tiles for grad, tiles in calls if not grad] == [5] * (n_tiles // 5) + ([n_tiles % 5] if n_tiles % 5 else [])
    calls.clear()
    (x, counts), targets = inputs(model, batch, epoch=1)
    assert targets is None and x.shape == (2, 3, 3, 32, 32) and counts.tolist() == [3, 3]
    for image, positions, bag in zip(batch.images, kept, x):
        assert torch.equal(bag, pipeline(cut_tiles(image, positions, 32)))  # the kept tiles, nothing else
    calls.clear()
    model(x, counts).sum().backward()
    assert calls == [(True, 6)]  # one encoder pass with gradients, over the 2 x 3 kept tiles
    assert all(p.grad is not None for p in model.parameters())


def test_bags_smaller_than_m_are_padded_and_masked():
    model, pipeline, inputs = bag_setup(keep=8)
    batch = two_images(sizes=((128, 128), (32, 32)))  # 16+ tiles, and exactly one
    (x, counts), _ = inputs(model, batch, epoch=1)
    assert counts.tolist() == [8, 1] and x.shape[:2] == (2, 8)
    assert all(torch.equal(x[1, k], x[1, 0]) for k in range(8))  # the lone tile, repeated as padding
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x, counts)[1], model(x[1, :1]), atol=1e-5)  # pooled: the tile alone


def test_the_warm_up_draws_tiles_at_random_without_scoring():
    model, _, inputs = bag_setup(keep=3, warmup=1)
    calls = encoder_calls(model)
    batch = two_images()
    first = inputs.select(model, batch, epoch=1)
    assert calls == [] and [len(k) for k in first] == [3, 3]
    assert inputs.select(model, batch, epoch=1) == first  # a pure function of the samples' seeds
    assert inputs.select(model, two_images(seeds=(21, 22)), epoch=1) != first
    inputs.select(model, batch, epoch=2)
    assert calls and not any(grad for grad, _ in calls)  # after the warm-up: scored, without gradients


def test_the_time_measurement_steps_through_the_bag_inputs():
    from torch import nn

    from cnnlab.training.budget import measure_seconds_per_image

    model, pipeline, inputs = bag_setup(keep=3, warmup=1)
    calls = encoder_calls(model)  # the hook travels with the copy the measurement trains
    batch = two_images()

    class Loader:
        def __iter__(self):
            yield batch

    assert measure_seconds_per_image(model, Loader(), pipeline, nn.CrossEntropyLoss(), batches=1,
                                     inputs=inputs) > 0
    # measured after the warm-up: every step scored its tiles without gradients, then trained 2 x 3 tiles
    assert (True, 6) in calls and any(not grad for grad, _ in calls)


def test_the_run_records_bags_and_validates_whole_images(bag_run, objects):
    run = bag_run.run_dir
    meta = json.loads((run / "model.json").read_text())
    pre = meta["preprocessing"]
    assert (pre["aggregate"], pre["bag_tiles"], pre["tile"], pre["scale"], pre["overlap"]) == \
        ("attention", 4, 32, 0.25, 0.0)
    assert meta["model_options"]["bag"] is True
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["aggregate"] == "attention" and config["bag_tiles"] == 4 and config["batch_size"] == 2
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(0 <= float(row["val_acc"]) <= 1 for row in rows)
    val_images = sum(1 for _ in (objects / "val").rglob("*.jpg"))
    assert json.loads((run / "eval_val.json").read_text())["images"] == val_images  # one bag per image


def test_predict_gives_the_pooled_forward_of_the_images_tiles(bag_run, objects, tmp_path):
    image = sorted((objects / "val" / "cross").iterdir())[0]
    rows = predict(bag_run.run_dir, [image], heatmap=tmp_path / "maps", workers=0)
    assert image_size(rows[0]["heatmap"])[0] > 100
    # by hand: the image at scale 0.25, its 16 tiles, each tile's logits and score, the top 4 pooled by attention
    trained = open_trained(bag_run.run_dir)
    model = trained.model.eval()
    pixels = trained.dataset([Sample(str(image), 0)]).load(0)
    assert pixels.shape == (3, 128, 128)
    tiles = trained.pipeline(cut_tiles(pixels, tile_positions(128, 128, 32, 0.0), 32))     # (16, 3, 32, 32)
    with torch.no_grad():
        logits, scores = model(tiles), model.scores(tiles)                                 # (16, 2), (16,)
        kept = scores.topk(4).indices
        pooled = torch.softmax(scores[kept], 0) @ logits[kept]
        assert torch.allclose(model(tiles[kept][None])[0], pooled, atol=1e-5)  # training's 5-D forward agrees
    expected = torch.softmax(pooled, 0)
    got = {t["class"]: t["probability"] for t in rows[0]["top"]}
    assert [got[c] for c in trained.record.classes] == pytest.approx(expected.tolist(), abs=1e-5)
    # the heatmap's values: each tile's attention relative to the strongest
    windows = window_logits(model, pixels, trained.pipeline, trained.preprocessing)
    assert torch.allclose(windows.attention(), torch.exp(scores - scores.max()), atol=1e-5)
    assert windows.weights(trained.preprocessing).nonzero().flatten().sort().values.tolist() == \
        kept.sort().values.tolist()
    with pytest.raises(CnnlabError, match="--class 'cross': the heatmap of a bag run"):
        predict(bag_run.run_dir, [image], heatmap=tmp_path / "maps", heatmap_class="cross")


def test_explain_shows_the_tiles_the_prediction_rests_on_strongest_first(bag_run, objects, tmp_path):
    from cnnlab.commands.explain import explain
    from cnnlab.models.gradcam import grad_cam, upsample

    image = sorted((objects / "val" / "cross").iterdir())[0]
    result = explain(bag_run.run_dir, [image], out=tmp_path / "cams")
    row = result.rows[0]
    assert image_size(row["evidence"]) > (100, 100) and image_size(row["file"]) > (100, 100)
    # the evidence is the kept tiles (4 of 16) by attention weight, each with its own Grad-CAM for the class
    trained = open_trained(bag_run.run_dir)
    pixels = trained.dataset([Sample(str(image), 0)]).load(0)                            # (3, 128, 128)
    explanation = explain_image(trained, pixels, str(image))
    windows = window_logits(trained.model.eval(), pixels, trained.pipeline, trained.preprocessing)
    weights = windows.weights(trained.preprocessing)                                      # (16,), 4 non-zero
    order = weights.argsort(descending=True)[:4].tolist()
    assert [(e.top, e.left) for e in explanation.evidence] == [windows.positions[k] for k in order]
    assert [e.weight for e in explanation.evidence] == pytest.approx(weights[order].tolist(), abs=1e-6)
    assert sum(e.weight for e in explanation.evidence) == pytest.approx(1.0, abs=1e-5)
    first = explanation.evidence[0]
    tile = cut_tiles(pixels, [(first.top, first.left)], 32)                               # (1, 3, 32, 32)
    assert torch.equal(first.tile, tile[0])
    cam, _ = grad_cam(trained.model, trained.pipeline(tile), explanation.class_index)
    cam = upsample(cam, (32, 32))[0]
    assert torch.allclose(first.cam, cam / cam.max(), atol=1e-5)


def test_the_report_shows_the_evidence_tiles_of_the_top_losses(bag_run):
    run = bag_run.run_dir
    evaluation = json.loads((run / "eval_val.json").read_text())
    assert evaluation["files"]["top_losses_evidence"] == "top_losses_val_evidence.png"
    width, height = image_size(run / "top_losses_val_evidence.png")
    rows = min(4, len(evaluation["top_losses"]))
    assert width > 4 * 64 and height > rows * 64  # 4 tiles per row, a row per top-loss image (at most 4)
    assert "evidence tiles of the top losses, val" in (run / "report.html").read_text()


def test_evaluate_matches_the_runs_validation(bag_run):
    run = bag_run.run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    best = min(rows, key=lambda row: float(row["val_loss"]))  # best.safetensors: the lowest validation loss
    result = evaluate(run, workers=0, verbose=False)
    assert result.accuracy == pytest.approx(float(best["val_acc"]), abs=1e-6)
    assert result.loss == pytest.approx(float(best["val_loss"]), abs=1e-4)


def test_a_bag_run_is_not_exported(bag_run):
    with pytest.raises(CnnlabError, match="is a bag run .*nothing was written"):
        export(bag_run.run_dir)
    assert not (bag_run.run_dir / "model.onnx").exists()


def test_a_model_without_feature_maps_is_refused_before_any_file(objects, tmp_path):
    out = tmp_path / "mlp"
    with pytest.raises(CnnlabError, match=r"--aggregate attention .* model 'mlp' has none"):
        fit(data=str(objects), epochs=1, out=str(out), **(BAG | {"model": "mlp", "model_options": {}}))
    assert not out.exists()


def test_an_image_smaller_than_one_tile_is_named(objects, tmp_path):
    with pytest.raises(CnnlabError, match=r"objects/.*\.jpg is 128x128 px at scale 0.25, smaller than one 200 px "
                                          r"tile; use a smaller --tile, a larger --scale"):
        fit(data=str(objects), epochs=1, out=str(tmp_path / "big"), **(BAG | {"tile": 200}))
    assert not (tmp_path / "big").exists()


def test_bag_options_that_cannot_work_are_refused():
    with pytest.raises(CnnlabError, match="--aggregate attention treats each image as a bag of tiles: give their "
                                          "size with --tile"):
        TrainConfig(aggregate="attention")
    with pytest.raises(CnnlabError, match="--mixup blends pairs of training images"):
        TrainConfig(aggregate="attention", tile=32, mixup=0.2)
    with pytest.raises(CnnlabError, match=r"--bag-tiles 0 is out of range; it must be in \[1, 4096\]"):
        TrainConfig(aggregate="attention", tile=32, bag_tiles=0)
    assert TrainConfig(aggregate="attention", tile=32).batch_size == 2
    assert TrainConfig(tile=32).batch_size == 32 and TrainConfig(tile=32).tile_overlap == 0.5
