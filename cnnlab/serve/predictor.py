"""One uploaded image, predicted: bytes in memory -> top-k classes and a picture of where the network looked.

What `cnnlab serve` runs for every upload, apart from HTTP. The bytes are decoded by cnnlab.data.images with the
run's pixel cap (a bomb is refused from its header) and prepared as `cnnlab predict` prepares a file:

    whole-image runs  decode at the run's short side -> eval_transform (resize, centre crop) -> the model with
                      Grad-CAM of the predicted class (one forward and one backward pass) -> overlay
    tiled runs        decode at the run's pixel scale -> the sliding window of cnnlab.data.tiles -> tile logits,
                      aggregated as the run does -> heatmap of the predicted class's probability per window
                      (bag runs: of each tile's attention, cnnlab.runs.display.window_heatmap)

Decoding runs in parallel in the caller's threads; the model runs under one lock, because Grad-CAM hooks the
model's last stage and reads gradients, which two requests at once would mix.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass

import torch

from cnnlab import plots
from cnnlab.data.images import encode_png, image_header, read_at
from cnnlab.errors import CnnlabError
from cnnlab.runs.display import window_heatmap
from cnnlab.runs.explain import explain_image, overlay_image
from cnnlab.runs.inference import TrainedModel
from cnnlab.runs.reject import is_unknown
from cnnlab.training.forward import window_logits


@dataclass
class Prediction:
    """One image's answer: the top-k, the picture of where the network looked (PNG), and facts for the page."""

    name: str
    top: list[dict]  # [{"class", "probability"}], most probable first
    overlay_png: bytes | None  # Grad-CAM (whole-image runs) or per-window heatmap (tiled runs); None for an MLP
    overlay_kind: str | None  # "grad-cam", "heatmap" or None
    width: int  # the uploaded image, upright
    height: int
    image_format: str
    seconds: float
    unknown: bool = False  # the top probability is below the run's threshold: `top` are the closest classes
    threshold: float | None = None  # the threshold applied (cnnlab.runs.reject); None: none

    def to_dict(self) -> dict:
        """The JSON the API answers with (the overlay as a data: URL)."""
        overlay = None if self.overlay_png is None else \
            "data:image/png;base64," + base64.b64encode(self.overlay_png).decode("ascii")
        return {"name": self.name, "top": self.top, "overlay": overlay, "overlay_kind": self.overlay_kind,
                "image": {"width": self.width, "height": self.height, "format": self.image_format},
                "seconds": round(self.seconds, 4), "unknown": self.unknown, "threshold": self.threshold}


class UploadPredictor:
    """A run's model loaded once; `predict(data, name, top_k)` is safe to call from many threads. `threshold`: an
    image whose top probability is below it is answered unknown (cnnlab.runs.reject); None: never."""

    def __init__(self, trained: TrainedModel, threshold: float | None = None):
        self.trained = trained
        self.threshold = threshold
        self.classes = trained.record.classes
        self.has_cam = bool(trained.model.stage_modules())  # an MLP has no feature maps to explain
        self._model_lock = threading.Lock()

    def predict(self, data: bytes, name: str, top_k: int = 3) -> Prediction:
        """Decode `data` (an image file's bytes; `name` only for messages) and predict it; ImageReadError for an
        upload that is no image, damaged or over the pixel cap, CnnlabError for one too small for a tile."""
        started = time.perf_counter()
        trained, pre = self.trained, self.trained.preprocessing
        width, height, kind = image_header(name, trained.max_pixels, data)  # the cap, from the header only
        if pre.tile:
            image = read_at(name, pre.resolution, max_pixels=trained.max_pixels, data=data)  # (3, H, W) at its scale
            if min(image.shape[1:]) < pre.tile:
                raise CnnlabError(f"{name} is {image.shape[2]}x{image.shape[1]} px at this run's pixel scale "
                                  f"{pre.scale:g}, smaller than one of its {pre.tile} px windows; send a larger image")
            with self._model_lock:
                probabilities, overlay = self._tiled(image)
            kind_of_overlay = "heatmap"
        else:
            image = pre.eval_transform()(read_at(name, pre.resolution, max_pixels=trained.max_pixels,
                                                 data=data))                            # (3, S, S) uint8
            with self._model_lock:
                probabilities, overlay = self._whole(image, name)
            kind_of_overlay = "grad-cam" if overlay is not None else None
        k = max(1, min(top_k, len(self.classes)))
        values, indices = probabilities.topk(k)
        top = [{"class": self.classes[i], "probability": round(float(v), 6)}
               for v, i in zip(values.tolist(), indices.tolist())]
        return Prediction(name, top, None if overlay is None else encode_png(overlay), kind_of_overlay, width,
                          height, kind, time.perf_counter() - started,
                          unknown=is_unknown(float(values[0]), self.threshold), threshold=self.threshold)

    def _whole(self, image: torch.Tensor, name: str):
        """(K,) probabilities and the Grad-CAM overlay (h, w, 3) uint8 of the predicted class (None for an MLP)."""
        if not self.has_cam:
            with torch.no_grad(), self.trained.pipeline.precision.autocast(self.trained.pipeline.device):
                logits = self.trained.model(self.trained.pipeline(image[None])).float()[0].cpu()
            return torch.softmax(logits, 0), None
        explanation = explain_image(self.trained, image, name)
        return explanation.probabilities, overlay_image(explanation)

    def _tiled(self, image: torch.Tensor):
        """(K,) probabilities by the run's sliding window, and the predicted class's probability (bag runs: the
        attention) per window over the image (h, w, 3) uint8."""
        trained, pre = self.trained, self.trained.preprocessing
        windows = window_logits(trained.model, image, trained.pipeline, pre)
        probabilities = torch.softmax(windows.image_logits(pre), 0)
        picture, heat, _ = window_heatmap(image, windows, pre)
        return probabilities, plots.blend_map(picture, heat)
