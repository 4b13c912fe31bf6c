"""Language models a ticket can be drawn from: a small LSTM and a small GPT-style Transformer.

Both map token ids (batch, time) to next-token logits (batch, time, vocab). Their prunable weights are
the token (and position) embeddings, the recurrent matrices `weight_ih_l*`/`weight_hh_l*` of `nn.LSTM`,
the attention projections (plain `nn.Linear` q/k/v/out, so the pruner needs no attention internals),
the feed-forward layers and the output layer `head`, named by `output_name` and pruned at
`prune.output_rate` like a classifier's. `model.dense_embeddings` lists the embeddings in
`dense_modules`, which the pruner never touches.

A float input of shape (batch, time, vocab) is read as a distribution over tokens and embedded as
`x @ embedding`: one-hot rows give the usual lookup, and SynFlow's input of ones (every token at once)
gives the embedding's column sums, so the data-free scorer works on token models too.

Example:
    >>> from trainables.config import ModelConfig
    >>> net = lstm(ModelConfig(name="lstm", width=32, depth=1), (16, 50), 50)
    >>> net(torch.zeros(2, 16, dtype=torch.long)).shape, net.output_name
    (torch.Size([2, 16, 50]), 'head')
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.config import ModelConfig

MLP_RATIO = 4  # Transformer feed-forward width / model width (GPT-2's ratio)


def _embed(embedding: nn.Embedding, x: Tensor) -> Tensor:
    """Token ids -> rows of the table; a float (batch, time, vocab) input -> its mixture of rows."""
    if x.is_floating_point():
        return x.to(embedding.weight.dtype) @ embedding.weight
    return embedding(x)


class LSTMLanguageModel(nn.Module):
    """Embedding (vocab -> width), `depth` stacked LSTM layers of `width` units, Linear head to the vocab."""

    def __init__(self, vocab: int, width: int, depth: int, *, dense_embeddings: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, num_layers=depth, batch_first=True)
        self.head = nn.Linear(width, vocab)
        self.output_name = "head"
        self.dense_modules: tuple[str, ...] = ("embed",) if dense_embeddings else ()
        # Embedding rows on the scale of the LSTM's own uniform(+-1/sqrt(width)) weights, so a global
        # magnitude ranking compares like with like (torch's default N(0, 1) would never be pruned).
        nn.init.normal_(self.embed.weight, std=width**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        # cuDNN cannot backpropagate in eval mode (SynFlow scores in eval mode): use the native kernel then.
        native = x.is_cuda and not self.training and torch.is_grad_enabled()
        with torch.backends.cudnn.flags(enabled=not native):
            hidden, _ = self.lstm(_embed(self.embed, x))
        return self.head(hidden)


class Block(nn.Module):
    """Pre-norm Transformer block: causal multi-head self-attention, then a ReLU feed-forward layer."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.fc = nn.Linear(width, MLP_RATIO * width)
        self.proj = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        h = self.norm1(x)
        q, k, v = (f(h).view(b, t, self.heads, w // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        # Written out rather than F.scaled_dot_product_attention: vmap (members trained together) has no
        # batching rule for the fused kernel and would fall back to a slow loop. Windows are short.
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(w // self.heads)  # (b, heads, t, t)
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = logits.masked_fill(future, float("-inf")).softmax(-1) @ v  # (b, heads, t, w / heads)
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, w))
        return x + self.proj(F.relu(self.fc(self.norm2(x))))


class TransformerLanguageModel(nn.Module):
    """Token and learned position embeddings, `depth` causal blocks, final LayerNorm, Linear head."""

    def __init__(self, vocab: int, width: int, depth: int, heads: int, context: int, *,
                 dense_embeddings: bool = False) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.output_name = "head"
        self.dense_modules: tuple[str, ...] = ("embed", "position") if dense_embeddings else ()
        # GPT-2's initialisation: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 depth)
        # so the residual stream's variance does not grow with depth; zero biases.
        for name, p in self.named_parameters():
            if p.dim() > 1:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("out.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith(".bias") and "norm" not in name:
                nn.init.zeros_(p)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        if t > self.context:
            raise ValueError(f"a window of {t} tokens exceeds model.context={self.context}")
        positions = torch.arange(t, device=x.device)
        h = _embed(self.embed, x) + self.position(positions)
        return self.head(self.norm(self.blocks(h)))


def lstm(cfg: ModelConfig, shape: tuple[int, ...], vocab: int) -> nn.Module:
    return LSTMLanguageModel(vocab, cfg.width, cfg.depth, dense_embeddings=cfg.dense_embeddings)


def transformer(cfg: ModelConfig, shape: tuple[int, ...], vocab: int) -> nn.Module:
    return TransformerLanguageModel(vocab, cfg.width, cfg.depth, cfg.heads, cfg.context,
                                    dense_embeddings=cfg.dense_embeddings)


# The language models: a corpus needs one of them and they need a corpus (trainables/tasks/lm/family.py).
BUILDERS = {"lstm": lstm, "transformer": transformer}
