"""Attention MIL pooling (cnnlab.models.mil): the gated attention's formula, masked softmax over padded bags, a bag's
logits as the attention-weighted mean of its tiles' own logits, and which encoders can be one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.mil import BagClassifier, GatedAttention, attention_weights, top_tiles


def bag_model(num_classes: int = 3) -> BagClassifier:
    torch.manual_seed(0)
    return create_model("simple_cnn", num_classes, bag=True, widths=[4, 8]).eval()


def test_gated_attention_is_w_of_tanh_v_times_sigmoid_u():
    torch.manual_seed(0)
    attention = GatedAttention(6, hidden=5)
    h = torch.randn(2, 7, 6)
    by_hand = (torch.tanh(h @ attention.V.weight.T + attention.V.bias)
               * torch.sigmoid(h @ attention.U.weight.T + attention.U.bias)) @ attention.w.weight.T + attention.w.bias
    assert torch.allclose(attention(h), by_hand.squeeze(-1), atol=1e-6)
    assert attention(h).shape == (2, 7)


def test_padding_gets_weight_zero_and_each_bag_sums_to_one():
    scores = torch.tensor([[0.5, 2.0, -1.0, 3.0], [1.0, 1.0, 9.0, 9.0]])
    weights = attention_weights(scores, torch.tensor([4, 2]))
    assert weights[1, 2:].tolist() == [0.0, 0.0]  # the second bag holds 2 tiles; the 9s are padding
    assert weights[1, :2].tolist() == pytest.approx([0.5, 0.5])
    assert weights[0].tolist() == pytest.approx(torch.softmax(scores[0], 0).tolist())
    assert weights.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_a_bags_logits_are_the_attention_weighted_mean_of_its_tiles_own_logits():
    model = bag_model()
    torch.manual_seed(1)
    bags = torch.randn(2, 5, 3, 16, 16)                                  # 2 bags of up to 5 tiles
    counts = torch.tensor([5, 3])
    with torch.no_grad():
        pooled = model(bags, counts)                                     # (2, 3)
        tile_logits, scores = model.tile_outputs(bags.flatten(0, 1))     # (10, 3), (10,)
        assert torch.allclose(tile_logits, model(bags.flatten(0, 1)), atol=1e-6)  # a 4-D batch: each tile alone
        assert torch.allclose(scores, model.scores(bags.flatten(0, 1)), atol=1e-6)
    tile_logits, scores = tile_logits.view(2, 5, 3), scores.view(2, 5)
    for b, n in enumerate(counts.tolist()):
        weights = torch.softmax(scores[b, :n], 0)                        # by hand, over the bag's own tiles
        assert torch.allclose(pooled[b], weights @ tile_logits[b, :n], atol=1e-5)
    # and the same as the classifier on the attention-pooled vectors (the linear layer commutes with the mean)
    with torch.no_grad():
        h = model.embed(bags.flatten(0, 1)).view(2, 5, -1)
        z = (attention_weights(model.mil.attention(h), counts).unsqueeze(-1) * h).sum(1)
        assert torch.allclose(pooled, model.mil.fc(z), atol=1e-5)


def test_padded_tiles_do_not_change_a_bags_logits():
    model = bag_model()
    torch.manual_seed(2)
    bags = torch.randn(1, 4, 3, 16, 16)
    other = bags.clone()
    other[0, 2:] = torch.randn(2, 3, 16, 16) * 5                         # different padding after 2 real tiles
    with torch.no_grad():
        assert torch.allclose(model(bags, torch.tensor([2])), model(other, torch.tensor([2])), atol=1e-6)
        assert not torch.allclose(model(bags), model(other), atol=1e-3)  # unmasked, the same tiles would count


def test_top_tiles_keeps_exactly_the_highest_scores():
    scores = torch.tensor([0.1, 5.0, -2.0, 3.0, 4.0, 0.0])
    assert top_tiles(scores, 3).tolist() == [1, 4, 3]
    assert sorted(top_tiles(scores, 10).tolist()) == [0, 1, 2, 3, 4, 5]  # fewer tiles than M: all of them
    assert len(top_tiles(scores, None)) == 6


def test_the_encoder_keeps_its_classifier_but_the_last_linear_layer():
    model = bag_model(num_classes=3)
    assert isinstance(model.encoder.fc, nn.Identity) and model.width == 8  # simple_cnn: pooled widths[-1]
    assert model.mil.fc.out_features == 3
    torch.manual_seed(0)
    hidden = create_model("mobilenet_v3_small", 2, bag=True)  # classifier: Linear, Hardswish, Dropout, Linear
    layers = hidden.encoder.net.classifier
    assert isinstance(layers[0], nn.Linear) and isinstance(layers[-1], nn.Identity)
    assert hidden.width == layers[0].out_features == 1024
    assert hidden.classifier() is hidden.mil and hidden.stage_modules()[0][0].startswith("encoder.net.features")


def test_a_model_without_feature_maps_cannot_be_a_tile_encoder():
    with pytest.raises(CnnlabError, match=r"model 'mlp' has none .*--model"):
        create_model("mlp", 2, bag=True, img_size=32)
