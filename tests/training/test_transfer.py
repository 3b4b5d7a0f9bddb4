"""Transfer: the classifier fitted on features computed once per image and view, then fine-tuning with a lower
backbone learning rate and BatchNorm held; --freeze keeps its meaning; --time and `cnnlab plan` count both phases."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlab.commands.train import fit
from cnnlab.config import TrainConfig
from cnnlab.data.folders import find_samples
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.training.budget import HEAD_SHARE, another_view, head_views
from cnnlab.training.device import resolve_precision
from cnnlab.training.optim import build_optimizer
from cnnlab.training.setup import input_pipeline, make_datasets, preprocessing_of
from cnnlab.training.transfer import (HEAD_BATCH, HEAD_EPOCHS, HEAD_LR, HEAD_MIN_STEPS, HEAD_WEIGHT_DECAY, classifier_inputs,
                                      fit_classifier, hold_batchnorm, train_classifier_first, view_seeds)

TINY = {"model": "resnet9", "model_options": {"widths": [8, 8, 16, 16]}, "img_size": 32, "batch_size": 8,
        "workers": 0, "cache": "off", "verbose": False}
CPU = torch.device("cpu")


def tiny_parts(tiny_data, **options):
    """A small resnet9 (random weights), the run's datasets and its input pipeline, as a run builds them."""
    config = TrainConfig(data=str(tiny_data), **{k: v for k, v in (TINY | options).items() if k != "verbose"})
    splits = find_samples(config.data, val_fraction=config.val_fraction, seed=config.seed)
    torch.manual_seed(0)
    model = create_model("resnet9", len(splits.classes), widths=(8, 8, 16, 16), img_size=32)
    datasets = make_datasets(splits, config, None)
    return config, model, datasets, input_pipeline(config, CPU, resolve_precision("fp32", CPU))


def all_views(requested: int):
    return lambda done, seconds: done < requested


def test_the_cached_phase_equals_training_the_classifier_on_the_same_features_directly(tiny_data):
    """Features computed by hand (each view's images read as the phase reads them, through model.features and the
    pooling), a fresh classifier trained on them by a loop written out here: the same weights, bit for bit."""
    config, model, datasets, pipeline = tiny_parts(tiny_data)
    train = datasets["train"]
    phase = train_classifier_first(model, train, preprocessing_of(config).eval_transform(), pipeline, seed=5,
                                   batch_size=64, workers=0, more_views=all_views(3), label_smoothing=0.1,
                                   verbose=False)
    assert phase.views == 3 and phase.images == len(train)

    model.eval()
    eval_transform = preprocessing_of(config).eval_transform()
    features, labels = [], []
    with torch.no_grad():
        for view in range(3):
            seeds = view_seeds(5, view, len(train))
            if view == 0:
                images = torch.stack([eval_transform(train.load(i)) for i in range(len(train))])
            else:
                images = torch.stack([train[(i, int(seeds[i]))][0] for i in range(len(train))])
            x = pipeline(images, seeds, train=view > 0)
            features.append(model.features(x).mean((2, 3)))  # resnet9's average pooling: the classifier's input
            labels.append(torch.tensor([sample.label for sample in train.samples]))
    features, labels = torch.cat(features), torch.cat(labels)

    reference = torch.nn.Linear(features.shape[1], 3)
    torch.nn.init.zeros_(reference.weight), torch.nn.init.zeros_(reference.bias)
    optimizer = torch.optim.AdamW([{"params": [reference.weight], "weight_decay": HEAD_WEIGHT_DECAY},
                                   {"params": [reference.bias], "weight_decay": 0.0}], lr=HEAD_LR)
    epochs = max(HEAD_EPOCHS, math.ceil(HEAD_MIN_STEPS / math.ceil(len(features) / HEAD_BATCH)))
    total = epochs * math.ceil(len(features) / HEAD_BATCH)
    generator = torch.Generator().manual_seed(5)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order), HEAD_BATCH):
            for group in optimizer.param_groups:
                group["lr"] = HEAD_LR * 0.5 * (1 + math.cos(math.pi * step / total))
            rows = order[start:start + HEAD_BATCH]
            loss = torch.nn.functional.cross_entropy(reference(features[rows]), labels[rows], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    assert torch.equal(model.fc.weight, reference.weight) and torch.equal(model.fc.bias, reference.bias)
    assert phase.train_accuracy == pytest.approx(
        (reference(features).argmax(1) == labels).float().mean().item())


def test_features_are_computed_once_per_image_and_view_and_the_backbone_is_untouched(tiny_data):
    config, model, datasets, pipeline = tiny_parts(tiny_data)
    encoded = []
    original = model.features
    model.features = lambda x: (encoded.append(len(x)), original(x))[1]  # counts the encoder's images
    model.train()  # as a run hands it over: the phase switches to eval mode and back
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    phase = train_classifier_first(model, datasets["train"], preprocessing_of(config).eval_transform(), pipeline,
                                   seed=0, batch_size=7, workers=0, more_views=all_views(4), verbose=False)
    assert sum(encoded) == 4 * len(datasets["train"]) == 4 * phase.images  # each image once per view, and no more
    assert len(encoded) == 4 * math.ceil(len(datasets["train"]) / 7)
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"fc.weight", "fc.bias"}  # BatchNorm statistics (running_mean/var, counts) unchanged
    assert model.training


def test_the_views_are_the_evaluation_view_then_seeded_augmentations(tiny_data):
    assert torch.equal(view_seeds(0, 1, 10), view_seeds(0, 1, 10))
    assert not torch.equal(view_seeds(0, 1, 10), view_seeds(0, 2, 10))
    assert not torch.equal(view_seeds(0, 1, 10), view_seeds(1, 1, 10))
    config, model, datasets, pipeline = tiny_parts(tiny_data)
    model.eval()
    image = preprocessing_of(config).eval_transform()(datasets["train"].load(0))[None]
    captured = classifier_inputs(model, pipeline(image))
    assert torch.equal(captured, model.features(pipeline(image)).mean((2, 3)))  # the classifier's input, pooled


def test_fit_classifier_learns_separable_features_and_is_a_function_of_the_seed():
    torch.manual_seed(0)
    labels = torch.arange(60) % 3
    features = 0.5 * torch.randn(60, 8) + 3 * torch.nn.functional.one_hot(labels, 8).float()  # 20 per class, apart
    first, second, other = (torch.nn.Linear(8, 3) for _ in range(3))
    loss = fit_classifier(first, features, labels, seed=1)
    fit_classifier(second, features, labels, seed=1)
    fit_classifier(other, features, labels, seed=2)
    assert torch.equal(first.weight, second.weight) and not torch.equal(first.weight, other.weight)
    assert (first(features).argmax(1) == labels).float().mean() == 1.0 and loss < 0.7  # chance: ln 3 = 1.1


def test_hold_batchnorm_keeps_statistics_while_the_rest_trains():
    torch.manual_seed(0)
    model = create_model("resnet9", 3, widths=(8, 8, 16, 16))
    model.train()
    hold_batchnorm(model)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = model.state_dict()
    statistics = [name for name in before if "running_" in name or "num_batches" in name]
    assert statistics and all(torch.equal(before[name], after[name]) for name in statistics)
    assert not torch.equal(before["stem.1.weight"], after["stem.1.weight"])  # BN's scale still trains
    assert model.dropout.training  # only BatchNorm is held


def test_the_backbone_trains_at_its_share_of_the_learning_rate():
    model = create_model("resnet9", 3, widths=(8, 8, 16, 16))
    optimizer = build_optimizer(model, "adamw", 0.01, 0.05, backbone_lr=0.1)
    head = {id(p) for p in model.fc.parameters()}
    by_group = [(group["lr"], {id(p) for p in group["params"]}) for group in optimizer.param_groups]
    assert by_group[0][0] == by_group[1][0] == 0.01 and by_group[0][1] | by_group[1][1] == head
    assert all(lr == pytest.approx(0.001) and not ids & head for lr, ids in by_group[2:])
    assert sum(len(ids) for _, ids in by_group) == len(list(model.parameters()))
    plain = build_optimizer(model, "adamw", 0.01, 0.05).param_groups  # from scratch: one rate, two groups
    assert [len(g["params"]) for g in plain] == [sum(p.ndim > 1 for p in model.parameters()),
                                                 sum(p.ndim <= 1 for p in model.parameters())]
    assert [g["lr"] for g in plain] == [0.01, 0.01]


def test_the_transfer_options_follow_pretrained_and_are_checked():
    scratch, transfer = TrainConfig(model="resnet9"), TrainConfig(model="efficientnet_lite0", pretrained=True)
    assert (scratch.head_views, scratch.backbone_lr, scratch.freeze_bn) == (0, 1.0, False)
    assert (transfer.head_views, transfer.backbone_lr, transfer.freeze_bn) == (3, 0.1, True)
    assert TrainConfig(model="efficientnet_lite0", pretrained=True, head_views=0, freeze_bn=False).head_views == 0
    with pytest.raises(CnnlabError, match=r"^--backbone-lr 2\.0 is out of range"):
        TrainConfig(backbone_lr=2.0)
    with pytest.raises(CnnlabError, match=r"^--head-views -1 is out of range"):
        TrainConfig(head_views=-1)


# --- the time budget: both phases -----------------------------------------------------------------------------------
def test_the_classifier_phase_takes_the_views_that_fit_its_share_of_the_budget():
    # 10 s a view, a 100 s budget: views end by HEAD_SHARE x 100 = 50 s
    assert another_view(0, 3, 10.0, 45.0, 100.0)  # view 0 always, whatever the time
    assert another_view(1, 3, 10.0, 40.0, 100.0) and not another_view(1, 3, 10.0, 41.0, 100.0)
    assert not another_view(3, 3, 1.0, 0.0, 100.0)  # never more than asked
    assert not another_view(0, 0, 1.0, 0.0, None)  # off
    assert head_views(3, 10.0, 5.0, 100.0) == 3  # 5 + 30 <= 50
    assert head_views(3, 10.0, 25.0, 100.0) == 2  # 25 + 20 <= 50 < 25 + 30
    assert head_views(3, 10.0, 45.0, 100.0) == 1
    assert head_views(8, 10.0, 0.0, None) == 8  # no budget: as asked
    assert HEAD_SHARE == 0.5


def test_the_plan_counts_the_classifier_phase_before_fine_tuning():
    """`cnnlab plan --time` with injected speeds: the classifier phase's views, its seconds, then the fine-tuning steps
    that fit what it leaves, exactly as `train` plans them after the phase."""
    from cnnlab.commands.plan import budget_with_head
    from cnnlab.training.budget import Speed, plan
    from cnnlab.training.transfer import fit_seconds

    speed = Speed(128, 0.02, 128, 0.02)  # 50 training images a second
    sides = lambda n: [128] * n  # noqa: E731
    # 1,000 training images, 200 val, 32 steps an epoch; encoding 200 images a second: 5 s a view
    views, seconds, fine_tune = budget_with_head(300.0, 10.0, 3, 0.005, speed, 32, 32, 1000, 200, sides)
    assert views == 3 and seconds == pytest.approx(3 * 5.0 + fit_seconds(3000))
    assert fine_tune.total_steps == plan(300.0, 10.0 + seconds, speed, 32, 32, 1000, 200, sides).total_steps
    assert fine_tune.total_steps < plan(300.0, 10.0, speed, 32, 32, 1000, 200, sides).total_steps
    views, seconds, _ = budget_with_head(60.0, 10.0, 3, 0.01, speed, 32, 32, 1000, 200, sides)
    assert views == 2 and seconds == pytest.approx(2 * 10.0 + fit_seconds(2000))  # a third would end after 30 s
    assert budget_with_head(300.0, 10.0, 0, 0.005, speed, 32, 32, 1000, 200, sides)[:2] == (0, 0.0)


@pytest.mark.slow
def test_a_pretrained_run_fits_its_classifier_first_then_fine_tunes(tiny_data, tmp_path, capsys):
    """End to end with the installed ImageNet weights: the classifier phase runs before epoch 1, the backbone
    BatchNorm statistics stay ImageNet's while its weights fine-tune, and the run's config records what was used."""
    from cnnlab.models.weights import load_weights
    from cnnlab.files import read_yaml

    torch.manual_seed(0)
    start = create_model("efficientnet_lite0", 3, pretrained=True).state_dict()
    result = fit(data=str(tiny_data), pretrained=True, epochs=1, ema=False, out=str(tmp_path / "run"),
                 **(TINY | {"model": "efficientnet_lite0", "model_options": {}, "verbose": True}))
    log = capsys.readouterr().err
    # tiny_data: 3 classes x 12 training images, each encoded under 3 views, before epoch 1's line
    assert "classifier phase: features of 36 training images x 3 views" in log
    assert log.index("classifier phase") < log.index("epoch 1")
    trained, _ = load_weights(result.run_dir / "last.safetensors")
    assert torch.equal(trained["net.bn1.running_mean"], start["net.bn1.running_mean"])
    assert not torch.equal(trained["net.conv_stem.weight"], start["net.conv_stem.weight"])
    config = read_yaml(result.run_dir / "config.yaml")
    assert (config["head_views"], config["backbone_lr"], config["freeze_bn"]) == (3, 0.1, True)


@pytest.mark.slow  # a pretrained lite0 run; the two phases have a faster end-to-end test here
def test_freeze_still_trains_only_the_classifier_after_the_classifier_phase(tiny_data, tmp_path):
    torch.manual_seed(0)
    start = create_model("efficientnet_lite0", 3, pretrained=True).state_dict()
    probe = fit(data=str(tiny_data), pretrained=True, freeze=1, epochs=1, ema=False, out=str(tmp_path / "probe"),
                **(TINY | {"model": "efficientnet_lite0", "model_options": {}}))
    trained = probe.model.state_dict()
    changed = {name for name in start if not torch.equal(start[name], trained[name])}
    assert changed == {"net.classifier.weight", "net.classifier.bias"}
