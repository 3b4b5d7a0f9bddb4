"""cnnlab.summary: shapes from the formula equal the forward pass; the lecture's MLP figure; receptive
fields and MACs against hand computations; layers that drop border pixels are flagged."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.scratch import output_size_info
from cnnlab.models.summary import (ModelSummary, ShapeCheckError, layer_table, parse_input_shape, summarize_model,
                                   summary)


def _real_leaf_shapes(model: nn.Module, shape: tuple) -> list[tuple]:
    """Output shapes of every leaf layer call in a real CPU forward pass (independent of cnnlab.summary)."""
    shapes = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape[1:]))) for m in leaves]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    return shapes


def test_lecture_mlp_figure_and_cnn_under_one_percent():
    result = summarize_model("simple_cnn", "3x1000x1000", num_classes=10, mlp_hidden=1000)
    assert result.mlp_params == 3 * 1000 * 1000 * 1000 + 1000 == 3_000_001_000
    # 3·32·9 + 32·64·9 + 64·128·9 + 128·256·9 conv weights, 2·(32+64+128+256) BN, 256·10 + 10 linear
    assert result.total_params == 391_466 == sum(p.numel() for p in create_model("simple_cnn", 10).parameters())
    assert result.total_params < 0.01 * result.mlp_params
    text = result.describe()
    assert "3,000,001,000" in text and "391,466" in text
    assert result.device == "meta"


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 1001, 999), (3, 37, 45)])
def test_simple_cnn_shapes_equal_a_real_forward_pass(shape):
    options = {"widths": [4, 8, 8, 8]}  # narrow, so the real 1001x999 forward stays cheap
    result = summarize_model("simple_cnn", shape, **options)
    real = _real_leaf_shapes(create_model("simple_cnn", 10, **options), shape)
    assert [tuple(row["output_shape"]) for row in result.rows] == real
    windows = [row for row in result.rows if row["type"] in ("Conv2d", "MaxPool2d")]
    assert len(windows) == 8 and all(row["computed"] for row in windows)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 67, 45)])
def test_torchvision_shapes_equal_a_real_forward_pass(name, shape):
    result = summarize_model(name, shape)
    assert [tuple(row["output_shape"]) for row in result.rows] == _real_leaf_shapes(create_model(name, 10), shape)
    assert all(row["computed"] for row in result.rows)  # every row's shape came from a formula, then was checked


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 67, 45)])
def test_efficientnet_lite_shapes_equal_a_real_forward_pass(shape):
    """timm's TensorFlow-'same' convolutions pad in their own forward: shown as p=same, shapes from the forward pass."""
    result = summarize_model("efficientnet_lite0", shape)
    model = create_model("efficientnet_lite0", 10)
    assert [tuple(row["output_shape"]) for row in result.rows] == _real_leaf_shapes(model, shape)
    same = [row for row in result.rows if row["type"] == "Conv2dSame"]  # the stem and four stride-2 depthwise convs
    assert len(same) == 5 and all(row["padding"] == "same" and not row["computed"] for row in same)
    assert tuple(same[0]["output_shape"]) == (32, -(-shape[1] // 2), -(-shape[2] // 2))  # ceil(side / 2)


def test_flags_are_exactly_the_layers_that_drop_input_rows():
    # simple_cnn at 1001x999: every MaxPool2d(2) meets an odd side somewhere (hand computation):
    # 1001x999 -> 500x499 -> 250x249 -> 125x124 -> 62x62
    result = summarize_model("simple_cnn", "3x1001x999")
    assert [row["name"] for row in result.flagged] == [f"stages.{i}.3" for i in range(4)]
    assert [row["dropped"] for row in result.flagged] == [[1, 1], [0, 1], [0, 1], [1, 0]]
    assert "drops pixels" in result.describe() and "stages.3.3" in result.describe().split("handle with care")[1]

    # resnet18 at 224: the 1x1 stride-2 shortcut convs see even sides (56, 28, 14) and skip the last row and
    # column; the 3x3 stride-2 convs have padding 1, which absorbs the remainder.
    result = summarize_model("resnet18", "3x224x224")
    assert [row["name"] for row in result.flagged] == [f"net.layer{i}.0.downsample.0" for i in (2, 3, 4)]
    for row in result.rows:
        if row["kernel_size"] is not None:
            infos = [output_size_info(size, k, s, p, d) for size, k, s, p, d in zip(
                row["input_shape"][1:], row["kernel_size"], row["stride"], row["padding"], row["dilation"])]
            assert row["flagged"] == any(info.dropped for info in infos)

    # mobilenet_v3_small at odd sizes: divisions are inexact, but only padding rows are left out: no flags
    result = summarize_model("mobilenet_v3_small", "3x1001x999")
    assert result.flagged == []
    assert any(row["exact"] is False for row in result.rows)


def test_a_summary_in_a_notebook_is_the_reports_layer_table():
    result = summarize_model("simple_cnn", "3x1001x999")
    page = result._repr_html_()
    assert layer_table(result.rows) in page  # the renderer the report's Model section uses
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr") == len(result.rows)
    assert body.count('<tr class="flagged">') == len(result.flagged) == 4
    flagged = ", ".join(f"#{row['index']}" for row in result.flagged)
    assert f"Highlighted layers ({flagged}) never read" in page
    assert f"<b>{result.total_params:,}</b>" in page and f"<b>{result.total_macs:,}</b>" in page
    assert f"<b>{3 * 1001 * 999 * 1000 + 1000:,}</b> parameters" in page  # the lecture's MLP, first layer alone
    # the first conv: 32 filters of 3 x 3 x 3, no bias (batch norm follows), padding 1 keeps the size
    assert ('<tr><td class="num">1</td><td>stages.0.0</td><td>Conv2d</td><td>3 \u00d7 3</td><td>1 \u00d7 1</td>'
            '<td>32 \u00d7 1001 \u00d7 999</td><td class="num">864</td>') in page


def test_receptive_field_of_simple_cnn_stages_by_hand():
    result = summarize_model("simple_cnn", "3x128x128")
    rows = {row["name"]: row for row in result.rows}
    # conv 3x3 s1: rf += 2·jump; pool 2 s2: rf += 1·jump, jump *= 2
    # stage 1: 1 + 2·1 = 3, pool 3 + 1 = 4 (jump 2); stage 2: 4 + 2·2 = 8, pool 8 + 2 = 10 (jump 4);
    # stage 3: 10 + 2·4 = 18, 18 + 4 = 22 (jump 8); stage 4: 22 + 2·8 = 38, 38 + 8 = 46 (jump 16)
    assert [rows[f"stages.{i}.0"]["receptive_field"] for i in range(4)] == [[3, 3], [8, 8], [18, 18], [38, 38]]
    assert [rows[f"stages.{i}.3"]["receptive_field"] for i in range(4)] == [[4, 4], [10, 10], [22, 22], [46, 46]]
    assert rows["stages.3.3"]["jump"] == [16, 16]
    assert rows["fc"]["receptive_field"] is None  # after global pooling: the whole image


def test_receptive_field_follows_resnet_shortcuts():
    # conv1 7 s2 -> 7, maxpool 3 s2 -> 11 (jump 4), layer1 4 convs -> 43, layer2 -> 51 (jump 8) -> 99,
    # layer3 -> 115 (jump 16) -> 211, layer4 -> 243 (jump 32) -> 435. A row-order chain would count
    # the shortcut convs' strides a second time.
    result = summarize_model("resnet18", "3x224x224")
    fields = [row["receptive_field"] for row in result.rows if row["receptive_field"] is not None]
    assert fields[-1] == [435, 435]
    rows = {row["name"]: row for row in result.rows}
    assert rows["net.layer2.0.downsample.0"]["receptive_field"] == [43, 43]
    assert rows["net.layer2.0.downsample.0"]["jump"] == [8, 8]


def test_conv_and_linear_macs_and_params_by_the_formula():
    conv = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, groups=2)
    result = summary(conv, (8, 33, 31))
    (row,) = result.rows
    # H_out = (33 + 2 - 3)//2 + 1 = 17, W_out = (31 + 2 - 3)//2 + 1 = 16; C_out·H·W·(C_in/groups)·kH·kW
    assert row["output_shape"] == [16, 17, 16]
    assert row["macs"] == 16 * 17 * 16 * (8 // 2) * 3 * 3 == 156_672
    assert row["params"] == 16 * 4 * 3 * 3 + 16
    assert row["activation_bytes"] == 16 * 17 * 16 * 4
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 7))
    result = summary(model, (1, 10, 10))
    assert [row["macs"] for row in result.rows] == [0, 700]
    assert result.total_params == 707 and result.total_macs == 700


def test_mlp_counts_and_the_input_sets_its_size():
    result = summarize_model("mlp", "3x64x64", num_classes=10, hidden=32)
    assert result.total_params == 3 * 64 * 64 * 32 + 32 + 32 * 10 + 10
    assert result.rows[0]["params"] == 3 * 64 * 64 * 32 + 32
    with pytest.raises(CnnlabError, match="64x64 inputs only"):
        summary(create_model("mlp", 10, img_size=64), "3x64x63")


def test_the_callers_model_is_left_alone():
    model = create_model("simple_cnn", 5, widths=[4, 8])
    model.train()
    before = [p.clone() for p in model.parameters()]
    summary(model, "3x40x40")
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_falls_back_to_a_real_forward_when_meta_cannot_run():
    class ReadsValues(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            x = self.conv(x)
            return x * float(x.mean())  # needs data: impossible on meta

    result = summary(ReadsValues(), "3x20x20")
    assert result.device == "cpu" and result.rows[0]["output_shape"] == [4, 18, 18]


def test_a_wrong_formula_would_be_caught(monkeypatch):
    from cnnlab.models import summary as module
    from cnnlab.scratch import OutputSize

    monkeypatch.setattr(module, "output_size_info", lambda *args: OutputSize(size=1, exact=True, dropped=0))
    with pytest.raises(ShapeCheckError, match="the formula gives"):
        summarize_model("simple_cnn", "3x64x64")


def test_input_parsing_and_errors():
    assert parse_input_shape("3x1000x1000") == (3, 1000, 1000)
    assert parse_input_shape("1000x1000") == (3, 1000, 1000)
    assert parse_input_shape("1 x 28 x 28") == (1, 28, 28)
    for bad in ("abc", "3x0x5", "2x3x64x64", "64", "3x-1x4", ""):
        with pytest.raises(CnnlabError, match="CxHxW"):
            parse_input_shape(bad)
    with pytest.raises(CnnlabError, match="did you mean 'simple_cnn'"):
        summarize_model("simple_cn", "3x64x64")
    with pytest.raises(CnnlabError, match="too small"):
        summarize_model("simple_cnn", "3x8x8")
    with pytest.raises(CnnlabError, match="3-channel"):
        summarize_model("resnet18", "1x64x64")


def test_to_dict_is_json():
    result = summarize_model("simple_cnn", "3x64x64")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["mlp_params"] == 3 * 64 * 64 * 1000 + 1000
    assert len(data["rows"]) == len(result.rows) == 19
    assert isinstance(result, ModelSummary)


def test_cli_summary():
    from cnnlab.cli import app

    result = CliRunner().invoke(app, ["summary", "--model", "simple_cnn", "--input", "3x1000x1000"])
    assert result.exit_code == 0, result.output
    assert "3,000,001,000" in result.output and "391,466" in result.output
    result = CliRunner().invoke(app, ["summary", "--input", "64x64", "--model-option", "widths=[4,8]", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["input_shape"] == [3, 64, 64]
    narrow = create_model("simple_cnn", 10, widths=[4, 8])  # the repeated NAME=VALUE flag reached the model
    assert summary["total_params"] == sum(p.numel() for p in narrow.parameters()) < 391_466
