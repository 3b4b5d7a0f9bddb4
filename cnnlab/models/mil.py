"""Attention-based multiple-instance learning (Ilse et al., ICML 2018): an image is a bag of tiles with one label.

Any registered model with feature maps becomes the tile encoder: its own features() and its own pooling (head()
with its classifier taken out) turn a tile into a vector h (C,). A gated-attention head scores every tile of a bag,

    score_k = w^T (tanh(V h_k) * sigmoid(U h_k))        V, U: C -> ATTENTION_DIM, w: ATTENTION_DIM -> 1
    a = softmax(scores) over the bag's tiles            (the tanh says "how much", the sigmoid gate "whether")
    z = sum_k a_k h_k                                   the image's vector
    logits = fc(z)

and because fc is linear and the a_k sum to 1, the bag's logits are exactly the attention-weighted mean of the
tiles' own logits, sum_k a_k fc(h_k). So every tile has logits of its own (the bag of that tile alone), which is
what forward() gives a 4-D batch of tiles: Grad-CAM, inspect and the export see an ordinary per-tile classifier,
and a bag is pooled from its tiles' (logits, score) pairs without running the network on it again
(`tile_outputs`; cnnlab.training.forward.Windows pools them). A 5-D batch (B, M, 3, T, T) is B bags of M tiles: forward pools them (training).

Iterative Patch Selection (Bergner et al., ICLR 2023) decides which M tiles of an image a training step sees
(cnnlab.training.bags); this module only scores and pools.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError

# The attention's hidden width: Ilse et al. use 128 on 500-wide embeddings (and 64-128 in their other
# experiments); the tile vectors here are 256 (resnet9) to 2048 wide. 128 keeps the head at ~2 x C x 128
# weights, under 5% of resnet9's 1.6 M parameters.
ATTENTION_DIM = 128


class GatedAttention(nn.Module):
    """Scores of tile vectors: (..., C) -> (...,); softmax over a bag's scores gives its attention weights."""

    def __init__(self, in_features: int, hidden: int = ATTENTION_DIM):
        super().__init__()
        self.V = nn.Linear(in_features, hidden)
        self.U = nn.Linear(in_features, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)


def bag_mask(counts: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) tiles per bag -> (B, length) True where a position holds one of the bag's tiles (bags are padded)."""
    return torch.arange(length, device=counts.device)[None, :] < counts[:, None]


def attention_weights(scores: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n) scores -> (B, n) softmax over each bag's own tiles; padding (positions >= counts) gets weight 0."""
    if counts is not None:
        scores = scores.masked_fill(~bag_mask(counts, scores.shape[1]), float("-inf"))
    return torch.softmax(scores.float(), dim=1).to(scores.dtype)


def top_tiles(scores: torch.Tensor, keep: int | None) -> torch.Tensor:
    """Indices of the `keep` highest of a bag's scores (n,), highest first (all of them when there are fewer, or
    with None): the tiles Iterative Patch Selection keeps."""
    count = len(scores) if keep is None else min(keep, len(scores))
    return scores.topk(count).indices


def take_out_classifier(encoder: nn.Module, name: str) -> int:
    """Replace the last linear layer of the encoder's classifier() by nn.Identity, so that its head() returns the
    vector that layer read (after the pooling and whatever norm, hidden layer or dropout come before it); returns
    that vector's width."""
    linears = [module for module in encoder.classifier().modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise CnnlabError(f"model '{name}' has no linear layer at the end of its classifier, so its tiles cannot be "
                          "pooled into one vector; --aggregate attention needs one that has (e.g. --model resnet9)")
    for parent in encoder.modules():
        for child_name, child in parent.named_children():
            if child is linears[-1]:
                setattr(parent, child_name, nn.Identity())
                return linears[-1].in_features
    raise CnnlabError(f"model '{name}': its classifier() is not one of its own modules")


class MilHead(nn.Module):
    """Gated attention and the linear classifier over the pooled vector: (B, n, C) tile vectors -> (B, K)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.attention = GatedAttention(in_features)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, h: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        weights = attention_weights(self.attention(h), counts)                          # (B, n)
        z = (weights.unsqueeze(-1) * h).sum(1)                                          # (B, C)
        return self.fc(z)


class BagClassifier(nn.Module):
    """A registered model's features and pooling as the tile encoder, a MilHead on top. Seams as every model:
    features(x) the encoder's maps, head(f) each tile's own logits, stage_modules() the encoder's stages,
    classifier() the MilHead (what --freeze trains)."""

    def __init__(self, encoder: nn.Module, num_classes: int, name: str):
        super().__init__()
        if not encoder.stage_modules():
            raise CnnlabError(f"--aggregate attention encodes each tile by a model's feature maps, and model "
                              f"'{name}' has none (it flattens the image); choose a CNN with --model (e.g. --model "
                              "resnet9), or leave --aggregate attention out")
        self.width = take_out_classifier(encoder, name)
        self.encoder = encoder
        self.mil = MilHead(self.width, num_classes)
        self.min_input_size = encoder.min_input_size
        self.fixed_input_size = encoder.fixed_input_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, T) tiles -> (N, C, h, w) the encoder's last feature maps."""
        return self.encoder.features(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, T) tiles -> (N, C) tile vectors: the encoder's features and its own pooling (and dropout)."""
        return self.encoder.head(self.encoder.features(x)).flatten(1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) maps -> (N, K): each tile's own logits (a bag of that tile alone)."""
        return self.mil.fc(self.encoder.head(f).flatten(1))

    def forward(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, T, T) tiles -> (N, K) their own logits; (B, M, 3, T, T) bags (the first counts[b] tiles of bag b
        are real, the rest padding) -> (B, K) the bags' logits."""
        if x.dim() == 4:
            return self.head(self.features(x))
        bags, tiles = x.shape[:2]
        h = self.embed(x.flatten(0, 1)).view(bags, tiles, -1)                           # (B, M, C)
        return self.mil(h, counts)

    def tile_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, T, T) tiles -> (their own logits (N, K), attention scores (N,)), from one encoder pass: what a
        whole image's bag is pooled from (cnnlab.training.forward.Windows)."""
        h = self.embed(x)                                                               # (N, C)
        return self.mil.fc(h), self.mil.attention(h)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, T) tiles -> (N,) attention scores (patch selection ranks them)."""
        return self.mil.attention(self.embed(x))

    def stage_modules(self) -> list[tuple[str, nn.Module]]:
        """The encoder's stages, named as the encoder names them (under encoder.)."""
        return [(f"encoder.{name}", module) for name, module in self.encoder.stage_modules()]

    def classifier(self) -> nn.Module:
        """The attention and the linear layer: what a probe on frozen tile features trains."""
        return self.mil


def bag_model(encoder: nn.Module, num_classes: int, name: str) -> BagClassifier:
    """`encoder` (registered model `name`; its classifier's last linear layer is taken out) under a MilHead."""
    return BagClassifier(encoder, num_classes, name)
