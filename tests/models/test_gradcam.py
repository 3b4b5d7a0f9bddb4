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


def test_the_map_changes_when_the_trained_weights_are_randomised(tiny_run, tiny_data):
    """Adebayo et al.'s model-parameter randomisation test on a trained run: a map that stays the same with random
    weights would be an edge detector, not an explanation. Rank correlation below 0.5 on every image."""
    from cnnlab.runs.inference import open_trained

    trained = open_trained(tiny_run.run_dir)
    dataset = trained.dataset([__import__("cnnlab").data.folders.Sample(str(p), 0)
                               for p in sorted((tiny_data / "val" / "square").iterdir())])
    images = trained.pipeline(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    trained_maps, logits = grad_cam(trained.model, images)
    torch.manual_seed(123)
    random_model = create_model(trained.record.model, trained.record.num_classes, **trained.record.model_options)
    random_maps, _ = grad_cam(random_model, images, logits.argmax(1))

    def ranks(x: torch.Tensor) -> torch.Tensor:
        return x.flatten().argsort().argsort().float()
    for ours, random in zip(trained_maps, random_maps):
        a, b = ranks(ours), ranks(random)
        correlation = torch.corrcoef(torch.stack([a, b]))[0, 1]
        assert correlation < 0.5 or torch.isnan(correlation)


def test_a_model_without_stages_is_refused():
    with pytest.raises(CnnlabError, match="Grad-CAM needs a CNN"):
        grad_cam(create_model("mlp", 3, img_size=16), torch.randn(1, 3, 16, 16))
