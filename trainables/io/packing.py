"""A trained ticket's weights, kept positions only: what a ticket run records as `trained.safetensors`.

A masked weight is stored as the 1-D vector of its kept entries in row-major order (`mask[name]` says where
they go); every other tensor of the state dict (biases, BatchNorm parameters and statistics) is stored whole.
Pruned entries are exactly zero, so `unpack(pack(state, mask), mask)` gives the state back exactly.

Example:
    >>> state = {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "b": torch.ones(2)}
    >>> mask = {"w": torch.tensor([[True, False], [False, True]])}
    >>> pack(state, mask)["w"].tolist(), torch.equal(unpack(pack(state, mask), mask)["w"], state["w"])
    ([1.0, 2.0], True)
"""

from __future__ import annotations

import torch

from trainables.pruning.masks import Mask
from trainables.typed import ConfigError

StateDict = dict[str, torch.Tensor]


def pack(state: StateDict, mask: Mask) -> StateDict:
    """The state dict on the CPU with each masked tensor reduced to its kept entries."""
    out: StateDict = {}
    for name, value in state.items():
        v = value.detach().to("cpu")
        out[name] = v[mask[name].to("cpu")].clone() if name in mask else v.clone()
    return out


def unpack(packed: StateDict, mask: Mask) -> StateDict:
    """Full tensors again: kept entries from the packed vector, zeros elsewhere; ConfigError when they disagree."""
    out: StateDict = {}
    for name, value in packed.items():
        if name not in mask:
            out[name] = value
            continue
        m = mask[name].to("cpu")
        if value.dim() != 1 or value.numel() != int(m.sum()):
            raise ConfigError(f"trained weights: '{name}' holds {value.numel()} values, its mask keeps {int(m.sum())}")
        full = torch.zeros(m.shape, dtype=value.dtype)
        full[m] = value
        out[name] = full
    return out
