"""Pieces the architectures share: the Lottery Ticket paper's initialisation, dense stacks, the image check."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trainables.typed import ConfigError


def glorot(module: nn.Module) -> None:
    """Gaussian Glorot weights and zero biases, the initialisation of the Lottery Ticket paper."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def dense_stack(widths: Sequence[int], num_classes: int) -> nn.Sequential:
    """Linear-ReLU layers through `widths` (first entry = input features), then the output Linear."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(w_in, w_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


def image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image input, or ConfigError for vectors (MNIST-1D, flat synthetic data)."""
    if len(input_shape) != 3:
        shape = "x".join(map(str, input_shape))
        raise ConfigError(f"model.name={name} needs image input (C, H, W); the data has input shape "
                          f"{shape}: use lenet300 or mlp")
    c, h, w = input_shape
    return c, h, w
