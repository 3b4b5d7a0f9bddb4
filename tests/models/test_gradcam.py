"""Grad-CAM equals captum's LayerGradCam (float32, 1e-5) on the models' own last stage, and passes the
randomisation check of Adebayo et al. (2018): with the trained weights replaced by random ones, the map changes."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.gradcam import cam_layer, grad_cam

captum_attr = pytest.importorskip("captum.attr", reason="captum is a test dependency (pip install captum)")


@pytest.mark.parametrize("name, size", [("simple_cnn", 64), ("resnet18", 64), ("resnet9", 64),
                                        ("efficientnet_lite0", 64)])
def test_grad_cam_equals_captums(name, size):
    torch.manual_seed(0)
    model = create_model(name, 5).eval()
    images = torch.randn(3, 3, size, size)
    targets = torch.tensor([0, 3, 1])
    ours, _ = grad_cam(model, images, targets, relu=False)
    _, layer = cam_layer(model)
    theirs = captum_attr.LayerGradCam(model, layer).attribute(images, target=targets)  # (N, 1, h, w), no ReLU
    torch.testing.assert_close(ours, theirs[:, 0], atol=1e-5, rtol=1e-5)
    relu, _ = grad_cam(model, images, targets)
    relu_theirs = captum_attr.LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
    torch.testing.assert_close(relu, relu_theirs[:, 0], atol=1e-5, rtol=1e-5)
    assert torch.all(relu >= 0) and relu.shape == ours.shape


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of the flattened values, tied values sharing their mean rank (so a constant map has no order)."""
    values = x.flatten().double()
    ranks = torch.empty_like(values)
    ranks[values.argsort()] = torch.arange(len(values), dtype=values.dtype)
    unique, group = torch.unique(values, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, group, ranks)
    return (sums / torch.bincount(group))[group]


def assert_randomisation_changes_the_maps(trained_maps: torch.Tensor, random_maps: torch.Tensor) -> None:
    """Adebayo et al.'s check for maps (N, h, w): each trained map has an order of its own (not constant), and
    its rank correlation with the map of the randomised network is below 0.5. A constant map fails: its ranks
    are all equal and the correlation is undefined (ranks by argsort alone would give a constant map the
    order 0..n-1 of reading the pixels, which correlates with nothing, and the check would pass)."""
    assert len(trained_maps) == len(random_maps) > 0
    for index, (ours, random) in enumerate(zip(trained_maps, random_maps)):
        for name, cam in (("trained", ours), ("randomised", random)):
            assert cam.max() > cam.min(), f"image {index}: the {name} map is constant, {cam.max():g} everywhere"
        correlation = float(torch.corrcoef(torch.stack([average_ranks(ours), average_ranks(random)]))[0, 1])
        assert correlation < 0.5, f"image {index}: the map hardly changed (rank correlation {correlation:.2f})"


def test_the_randomisation_check_fails_for_a_constant_or_an_unchanged_map():
    torch.manual_seed(0)
    maps, other = torch.randn(3, 8, 8), torch.randn(3, 8, 8)
    assert_randomisation_changes_the_maps(maps, other)  # unrelated maps pass
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    with pytest.raises(AssertionError, match="image 0: the trained map is constant, 0 everywhere"):
        assert_randomisation_changes_the_maps(torch.zeros(3, 8, 8), other)
    with pytest.raises(AssertionError, match="image 0: the randomised map is constant, 0.5 everywhere"):
        assert_randomisation_changes_the_maps(maps, torch.full((3, 8, 8), 0.5))
    with pytest.raises(AssertionError, match=r"image 0: the map hardly changed \(rank correlation 1.00\)"):
        assert_randomisation_changes_the_maps(maps, 2 * maps.exp())  # another scale, the same order
    half = maps.clone()
    half[2] = other[2] + 0.1 * maps[2]  # only the last image's map changed
    with pytest.raises(AssertionError, match="image 0: the map hardly changed"):
        assert_randomisation_changes_the_maps(maps, half)


def test_the_map_changes_when_the_trained_weights_are_randomised(tiny_run, tiny_data):
    """Adebayo et al.'s model-parameter randomisation test on a trained run: a map that stays the same with random
    weights would be an edge detector, not an explanation. The maps before their ReLU are compared (captum's
    relu_attributions=False): after it the untrained network's map was all zero on 2 of these 4 images, and a
    constant map has no order to compare."""
    from cnnlab.runs.inference import open_trained

    trained = open_trained(tiny_run.run_dir)
    dataset = trained.dataset([__import__("cnnlab").data.folders.Sample(str(p), 0)
                               for p in sorted((tiny_data / "val" / "square").iterdir())])
    images = trained.pipeline(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    trained_maps, logits = grad_cam(trained.model, images, relu=False)
    torch.manual_seed(123)
    random_model = create_model(trained.record.model, trained.record.num_classes, **trained.record.model_options)
    random_maps, _ = grad_cam(random_model, images, logits.argmax(1), relu=False)
    assert trained_maps.shape == (4, 8, 8)  # 4 validation squares; simple_cnn's last stage at 32 px: 8 x 8
    assert_randomisation_changes_the_maps(trained_maps, random_maps)


def test_a_model_without_stages_is_refused():
    with pytest.raises(CnnlabError, match="Grad-CAM needs a CNN"):
        grad_cam(create_model("mlp", 3, img_size=16), torch.randn(1, 3, 16, 16))
