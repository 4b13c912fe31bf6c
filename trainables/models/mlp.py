"""Fully connected networks: LeNet-300-100 of the Lottery Ticket paper and `mlp` of any widths.

Layers are `fc1 .. fcK` on flattened inputs, the last one the output (`output_name`), initialised as in the
paper (Gaussian Glorot). Also the critic beside an RL policy (trainables/tasks/rl/policy.py).

Example:
    >>> from trainables.config import ModelConfig
    >>> lenet300(ModelConfig(), (1, 8, 8), 10).fc2
    Linear(in_features=300, out_features=100, bias=True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from trainables.config import ModelConfig
from trainables.models.layers import glorot

LENET300 = (300, 100)


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs; layers `fc1 .. fcK`, the last one the output."""

    def __init__(self, in_features: int, widths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        sizes = [in_features, *widths, num_classes]
        for i, (w_in, w_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            self.add_module(f"fc{i}", nn.Linear(w_in, w_out))
        self.depth = len(sizes) - 1
        self.output_name = f"fc{self.depth}"
        self.relu = nn.ReLU()
        glorot(self)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for i in range(1, self.depth + 1):
            x = self.get_submodule(f"fc{i}")(x)
            if i < self.depth:
                x = self.relu(x)
        return x


def lenet300(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), LENET300, num_classes)


def mlp(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), cfg.widths, num_classes)
