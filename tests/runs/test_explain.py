"""Grad-CAM of a tiled run: one map stitched over the whole image from its windows' maps."""

from __future__ import annotations

import pytest
import torch

from cnnlab.commands.explain import explain
from cnnlab.data.images import image_size
from cnnlab.errors import CnnlabError
from cnnlab.models.gradcam import grad_cam

from .test_prediction import capture_overlays, windows_by_hand


@pytest.mark.slow  # the objects tiled run (~30 s)
def test_explain_stitches_one_map_over_the_whole_image(tiled_run, objects, tmp_path, monkeypatch):
    """The stitched map equals each window's Grad-CAM upsampled to the window, placed where it was cut, averaged
    where windows overlap and divided by its peak once for the whole image; for the predicted class and another."""
    image = next((objects / "val" / "star").iterdir())
    model, positions, logits, pixels, normalise = windows_by_hand(tiled_run.run_dir, image, 0.5, 48, 24)
    probabilities = torch.softmax(logits.mean(0), 0)
    predicted = int(probabilities.argmax())
    classes = ["cross", "star"]
    overlays = capture_overlays(monkeypatch)
    for class_name in (None, classes[1 - predicted]):
        overlays.clear()
        result = explain(tiled_run.run_dir, [image], class_name=class_name, out=tmp_path / "cam")
        target = predicted if class_name is None else classes.index(class_name)
        assert result.rows[0] == {"path": str(image), "class": classes[target], "predicted": classes[predicted],
                                  "probability": pytest.approx(float(probabilities[predicted]), abs=1e-5),
                                  "file": str(tmp_path / "cam" / f"{image.stem}.gradcam.png")}
        total, count = torch.zeros(256, 256), torch.zeros(256, 256)
        for top, left in positions:  # one window at a time
            cam, _ = grad_cam(model, normalise(pixels[None, :, top:top + 48, left:left + 48]), target)                                      # (1, h, w)
            cam = torch.nn.functional.interpolate(cam[:, None], size=(48, 48), mode="bilinear",
                                                  align_corners=False)[0, 0]
            total[top:top + 48, left:left + 48] += cam
            count[top:top + 48, left:left + 48] += 1
        stitched = total / count
        stitched /= stitched.max()
        assert len(overlays) == 1 and overlays[0]["vmax"] is None
        torch.testing.assert_close(torch.from_numpy(overlays[0]["heat"]), stitched, atol=1e-5, rtol=0)
        assert stitched.min() < 0.5  # some windows hold less of the evidence: a map, not a constant
        assert image_size(result.files[0])[0] > 300
    with pytest.raises(CnnlabError, match="--class 'dog' is not one of the run's classes: cross, star"):
        explain(tiled_run.run_dir, [image], class_name="dog")
