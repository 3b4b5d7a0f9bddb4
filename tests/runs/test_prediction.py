"""The prediction engine on tiles: a tiled run (or any run, with tiled=True) slides its window over the whole
image, and the heatmap is the windows' probabilities; both against windows cut and run by hand."""

from __future__ import annotations

import pytest
import torch

from cnnlab import plots
from cnnlab.commands.predict import predict
from cnnlab.data.images import image_size


def windows_by_hand(run_dir, path, scale: float, tile: int, stride: int):
    """The sliding window computed here without cnnlab's tiling or inference code: the file decoded at `scale`,
    windows cut by slicing (the last row and column moved inward to end at the edge), the run's weights in
    fp32, the pixels normalised as model.json records. (model, positions, window logits (n, K), pixels,
    normalise: uint8 (N, 3, h, w) -> the model's input)."""
    from cnnlab.data.images import read_image
    from cnnlab.runs.reader import load_model

    model, record = load_model(run_dir)
    pixels = read_image(path, scale=scale)                                                # (3, H, W) uint8

    def starts(length: int) -> list[int]:
        found = list(range(0, length - tile + 1, stride))
        return found if found[-1] == length - tile else found + [length - tile]
    positions = [(top, left) for top in starts(pixels.shape[1]) for left in starts(pixels.shape[2])]
    mean = torch.tensor(record.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(record.preprocessing.std).view(1, 3, 1, 1)

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(normalise(torch.stack([pixels[:, top:top + tile, left:left + tile]
                                              for top, left in positions])))              # (n, K)
    return model, positions, logits, pixels, normalise


def capture_overlays(monkeypatch) -> list[dict]:
    """What predict and explain draw: every call of plots.heatmap_overlay (picture, map, ...), still drawn."""
    calls, draw = [], plots.heatmap_overlay

    def overlay(image, heat, path, **options):
        calls.append({"picture": image, "heat": heat, "path": path, **options})
        return draw(image, heat, path, **options)
    monkeypatch.setattr(plots, "heatmap_overlay", overlay)
    return calls


@pytest.mark.slow  # the objects tiled run (~30 s); tiny_tiled_run covers the window faster
def test_predict_slides_over_the_whole_image_and_writes_a_heatmap(tiled_run, objects, tmp_path, monkeypatch):
    """The image's probabilities are the softmax of the mean of its windows' logits, and the heatmap's every
    cell the mean probability of the windows over it; both against windows cut and run by hand.

    The hand computation is in fp32, as prediction is on every CPU (so that a run, its ONNX file and serve give
    one answer)."""
    image = next((objects / "val" / "cross").iterdir())
    overlays = capture_overlays(monkeypatch)
    rows = predict(tiled_run.run_dir, [image], heatmap=tmp_path / "maps")
    # 512 px at scale 0.5 = 256 px; windows of 48 at overlap 0.5: a stride of 24, starts 0, 24, ..., 192 and 208
    _, positions, logits, pixels, _ = windows_by_hand(tiled_run.run_dir, image, 0.5, 48, 24)
    assert pixels.shape == (3, 256, 256) and len(positions) == 10 * 10 and positions[-1] == (208, 208)
    expected = torch.softmax(logits.mean(0), 0)
    classes = ["cross", "star"]
    got = {t["class"]: t["probability"] for t in rows[0]["top"]}
    assert [got[c] for c in classes] == pytest.approx(expected.tolist(), abs=2e-6)  # rows round to 6 decimals
    assert [t["class"] for t in rows[0]["top"]] == [classes[i] for i in expected.argsort(descending=True)]

    # the heatmap of the predicted class: cells of one stride (24 px; the last row and column 16 px), each the
    # mean of the windows that overlap it
    shown = torch.softmax(logits, 1)[:, int(expected.argmax())]
    cells = -(-256 // 24)
    grid = torch.zeros(cells, cells)
    for row in range(cells):
        for column in range(cells):
            over = [k for k, (top, left) in enumerate(positions) if top < (row + 1) * 24 and top + 48 > row * 24
                    and left < (column + 1) * 24 and left + 48 > column * 24]
            grid[row, column] = shown[over].mean()
    assert len(overlays) == 1 and str(overlays[0]["path"]) == rows[0]["heatmap"]
    # drawn at the picture's size (256 px: not shrunk), each cell's value spread over its pixels (nearest)
    expected_heat = torch.nn.functional.interpolate(grid[None, None], size=(256, 256), mode="nearest")[0, 0]
    assert overlays[0]["heat"].shape == (256, 256)
    torch.testing.assert_close(torch.from_numpy(overlays[0]["heat"]), expected_heat, atol=1e-5, rtol=0)
    assert torch.equal(torch.from_numpy(overlays[0]["picture"]), pixels.permute(1, 2, 0))  # 256 px: not shrunk
    assert grid.max() - grid.min() > 1e-3  # the windows disagree: a map, not one value repeated
    width, height = image_size(rows[0]["heatmap"])
    assert width > 300 and height > 300


def test_any_run_can_predict_tiled(tiny_run, tiny_data):
    """A whole-image run predicting by windows of its input size (32 px) over the image at scale 1 (64 px): the
    default overlap of half a window gives starts 0, 16, 32 in each direction, and their logits' mean decides."""
    image = next((tiny_data / "val" / "circle").iterdir())
    rows = predict(tiny_run.run_dir, [image], tiled=True, scale=1.0)
    _, positions, logits, pixels, _ = windows_by_hand(tiny_run.run_dir, image, 1.0, 32, 16)
    assert pixels.shape == (3, 64, 64) and len(positions) == 9
    expected = torch.softmax(logits.mean(0), 0)
    classes = ["circle", "square", "triangle"]
    assert [(t["class"], t["probability"]) for t in rows[0]["top"]] == [
        (classes[i], pytest.approx(float(expected[i]), abs=2e-6)) for i in expected.argsort(descending=True)]
    whole = predict(tiny_run.run_dir, [image])  # the run's own way, one 32 px picture of the image: another answer
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(
        sorted(whole[0]["top"], key=lambda t: t["class"]), sorted(rows[0]["top"], key=lambda t: t["class"]))) > 1e-4
