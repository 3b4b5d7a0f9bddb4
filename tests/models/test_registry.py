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
