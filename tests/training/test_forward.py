"""Scoring a loader: flip TTA averages each image's logits with its mirror image's."""

from __future__ import annotations

import torch


def test_flip_tta_averages_the_image_and_its_mirror(tiny_run):
    from cnnlab.runs.inference import open_trained

    trained = open_trained(tiny_run.run_dir)
    dataset = trained.dataset([s for s in __import__("cnnlab").find_samples(
        trained.record.config.data).splits["val"]][:5])
    loader = trained.loader(dataset, batch_size=5, workers=0)
    plain, tta = trained.logits(loader), trained.logits(loader, tta=True)
    batch = next(iter(loader))
    x = trained.pipeline(batch.images)
    with torch.no_grad():
        expected = (trained.model(x) + trained.model(x.flip(-1))) / 2
    torch.testing.assert_close(tta.logits, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(plain.logits, tta.logits)
