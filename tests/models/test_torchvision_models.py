"""torchvision's models: --pretrained reads the official weights from torch's hub cache, offline, and without
the file says where to put it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model


def test_pretrained_works_offline_from_the_hub_cache(tmp_path, monkeypatch):
    from cnnlab.models.torchvision_models import official_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = Path(official_weights_file("resnet18"))
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(CnnlabError, match=r"put it at .*resnet18-f37072fd.pth \(or pass --weights FILE\)"):
        create_model("resnet18", 3, pretrained=True)  # no file, no network: a clear line, not a traceback
    torch.manual_seed(2)
    official = torchvision.models.resnet18(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official, path)
    model = create_model("resnet18", 3, pretrained=True)
    assert torch.equal(model.state_dict()["net.layer1.0.conv1.weight"], official["layer1.0.conv1.weight"])
