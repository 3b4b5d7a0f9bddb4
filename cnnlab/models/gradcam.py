"""Grad-CAM (Selvaraju et al. 2017): where in the image the network found the evidence for a class.

For a class c and the feature maps A (N, C, h, w) of the model's last convolutional stage (the stage the
model names itself, `stage_modules()[-1]`): each channel k gets the weight alpha_k = the mean over the
map of d score_c / d A_k, and the map is ReLU(sum_k alpha_k A_k), (N, h, w). Channels whose activity
raises the class score count positively; ReLU keeps the evidence for the class, not against it. The map
has the stage's resolution (1/32 of the input for resnet18 and resnet9); callers upsample it.

Computed in float32 with the model in eval mode, whatever precision training used, so that it equals
captum's LayerGradCam (tests/models/test_gradcam.py) and does not depend on bf16 rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError


def cam_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's last convolutional stage, as it names it; a clear error for a model without one (an MLP)."""
    stages = model.stage_modules()
    if not stages:
        raise CnnlabError(f"{type(model).__name__} has no convolutional stages (an MLP flattens the image), so "
                          "there is no map of where it looks; Grad-CAM needs a CNN")
    return stages[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, target: int | torch.Tensor | None = None,
             relu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (N, h, w), logits (N, K)) for normalised images (N, 3, H, W); `target`: the class per image (an int
    for all, a (N,) tensor, or None for each image's predicted class). `relu=False` keeps the negative
    evidence (what captum returns with relu_attributions=False)."""
    _, layer = cam_layer(model)
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda module, args, output: captured.__setitem__("maps", output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
            logits = model(images.float())                                                # (N, K)
            maps = captured["maps"]                                                       # (N, C, h, w)
            if target is None:
                target = logits.argmax(1)
            target = torch.as_tensor(target, device=logits.device).expand(len(logits))
            score = logits.gather(1, target.view(-1, 1)).sum()  # each image's own class score
            gradients, = torch.autograd.grad(score, maps)                                 # (N, C, h, w)
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)                                    # (N, C, 1, 1)
    cam = (weights * maps).sum(dim=1)                                                     # (N, h, w)
    return (cam.clamp(min=0) if relu else cam).detach(), logits.detach()


def upsample(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) maps -> (N, H, W), bilinear (the smooth picture Grad-CAM is shown as)."""
    return nn.functional.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
