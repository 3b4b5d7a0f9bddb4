"""Every registered model: forward/backward on a tiny batch, output shape, features/head seam."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_seams(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, img_size=32)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 4)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_every_model_describes_itself(name):
    """Stages (what inspect and Grad-CAM read), the classifier (what --freeze trains), the input sizes."""
    model = create_model(name, num_classes=4, img_size=32).eval()
    minimum, fixed = model.min_input_size, model.fixed_input_size
    assert isinstance(minimum, int) and minimum >= 1 and (fixed is None or fixed == minimum)
    side = fixed or max(minimum, 32)
    x = torch.randn(1, 3, side, side)
    stages = model.stage_modules()
    classifier = model.classifier()
    assert isinstance(classifier, torch.nn.Module) and any(m is classifier for m in model.modules())
    assert classifier.weight.shape[0] == 4 if hasattr(classifier, "weight") else \
        [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)][-1].out_features == 4
    outputs = []
    hooks = [module.register_forward_hook(lambda m, a, out: outputs.append(out)) for _, module in stages]
    with torch.no_grad():
        features = model.features(x)
    for hook in hooks:
        hook.remove()
    if name == "mlp":
        assert stages == []  # no feature maps: inspect and Grad-CAM refuse it clearly
        return
    assert len(stages) >= 3 and len(outputs) == len(stages)
    assert all(out.ndim == 4 for out in outputs)  # feature maps (N, C, h, w)
    assert torch.equal(outputs[-1], features)  # the last stage's output is features(x)
    modules = dict(model.named_modules())
    assert all(modules[n] is m for n, m in stages)  # names are the modules' own paths
    # the minimum side is the network's total stride: twice it gives 2x2 final feature maps
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 2 * minimum, 2 * minimum)).shape[-2:] == (2, 2)


def test_simple_cnn_parameters_do_not_grow_with_image_size():
    model = create_model("simple_cnn", 10)
    n = sum(p.numel() for p in model.parameters())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert model(torch.randn(1, 3, 200, 200)).shape == (1, 10)
    assert model.features(torch.randn(1, 3, 128, 128)).shape == (1, 256, 8, 8)
    assert n == sum(p.numel() for p in create_model("simple_cnn", 10).parameters())


def test_simple_cnn_options_change_the_architecture():
    model = create_model("simple_cnn", 3, widths=[8, 16, 32])
    assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 32, 4, 4)
    deep = create_model("simple_cnn", 3, depth=5)
    assert deep.features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_mlp_parameter_count_is_the_lectures_formula():
    model = create_model("mlp", 5, img_size=16, hidden=7)
    assert sum(p.numel() for p in model.parameters()) == (3 * 16 * 16 * 7 + 7) + (7 * 5 + 5)


def test_unknown_model_suggests_close_match():
    with pytest.raises(CnnlabError, match="did you mean 'resnet18'"):
        create_model("resnet81", 3)


def test_bad_model_option_is_a_clear_error():
    with pytest.raises(CnnlabError, match="bad option for model 'simple_cnn'"):
        create_model("simple_cnn", 3, colour="red")


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_resnet9_pools_as_asked(pool):
    """The head's global pool against torch's own adaptive pooling of the same feature map."""
    torch.manual_seed(0)
    model = create_model("resnet9", 3, pool=pool).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.features(x)  # (2, 256, 2, 2)
        avg = torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1)
        top = torch.nn.functional.adaptive_max_pool2d(features, 1).flatten(1)
        pooled = {"avg": avg, "max": top, "avgmax": (avg + top) / 2}[pool]
        torch.testing.assert_close(model(x), model.fc(pooled))
        assert not torch.allclose(avg, top)  # the three really differ on this input


def test_resnet9_refuses_an_unknown_pool():
    with pytest.raises(CnnlabError, match="pools with one of avg, max, avgmax"):
        create_model("resnet9", 3, pool="median")
