"""Pruning masks: which weights are prunable, exact top-k pruning, densities, collapse, controls, transfer.

A mask is `dict[str, torch.BoolTensor]` keyed by parameter name (True = kept). This module owns the
science of turning scores into a mask (DESIGN.md section 6): exact top-k by index, never a threshold, with
densities that are absolute fractions of each layer's (or the pool's) total weights so that IMP level L at
rate p lands on (1-p)^L within one weight. It also owns the mask functions of the sanity controls
(`shuffle`, `random_like`; controls.py registers them) and ticket transfer (`refit`). Scorers live in
scorers.py, mask files in trainables/io/maskio.py.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    >>> mask = prune({n: p.abs() for n, p in prunable(model).items()}, ones(model), 0.5, scope="layer")
    >>> layer_density(mask)
    {'0.weight': 0.5, '1.weight': 0.5}
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from trainables.config import SCOPES
from trainables.typed import ConfigError, choice

Mask = dict[str, torch.Tensor]

# Modules whose weights are prunable. Recurrent layers hold several weight matrices (`weight_ih_l0`,
# `weight_hh_l0`, ...) and attention its input projection (`in_proj_weight`); `_is_weight` knows them.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding,
                                                nn.RNNBase, nn.MultiheadAttention)


def _is_weight(module: nn.Module, name: str, bias: bool) -> bool:
    """Whether parameter `name` of a prunable `module` is a weight (or, with `bias`, a bias) to prune."""
    if isinstance(module, nn.RNNBase):  # weight_ih_l0, weight_hh_l0_reverse, bias_ih_l0, ...
        return name.startswith("weight_") or (bias and name.startswith("bias_"))
    if isinstance(module, nn.MultiheadAttention):  # out_proj is an nn.Linear of its own
        return name.endswith("proj_weight") or (bias and name == "in_proj_bias")
    return name == "weight" or (bias and name == "bias")


def prunable(model: nn.Module, *, bias: bool = False) -> dict[str, nn.Parameter]:
    """Weights (and with `bias=True` biases) of every prunable module, by full name, in module order.

    A model may name modules in `dense_modules` (e.g. an RL critic, or embeddings kept dense): nothing
    inside them is ever pruned.
    """
    dense = tuple(getattr(model, "dense_modules", ()))
    out: dict[str, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or any(prefix == d or prefix.startswith(f"{d}.")
                                                          for d in dense):
            continue
        dot = f"{prefix}." if prefix else ""
        for name, param in module.named_parameters(recurse=False):
            if _is_weight(module, name, bias):
                out[f"{dot}{name}"] = param
    return out


def output_param(model: nn.Module) -> str | None:
    """Name of the output layer's weight: `model.output_name` if set, else the last prunable Linear."""
    name = getattr(model, "output_name", None)
    if name is not None:
        return f"{name}.weight"
    linear = [prefix for prefix, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        return None
    return f"{linear[-1]}.weight" if linear[-1] else "weight"


def ones(model: nn.Module, *, bias: bool = False) -> Mask:
    """The dense mask, on each parameter's device."""
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable(model, bias=bias).items()}


def counts(mask: Mask) -> tuple[int, int]:
    """(kept entries, all entries) of a mask."""
    return sum(int(m.sum()) for m in mask.values()), sum(m.numel() for m in mask.values())


def density(mask: Mask) -> float:
    """Kept / total over all entries (1.0 for an empty mask)."""
    kept, total = counts(mask)
    return kept / total if total else 1.0


def layer_density(mask: Mask) -> dict[str, float]:
    return {n: int(m.sum()) / m.numel() if m.numel() else 1.0 for n, m in mask.items()}


def kept_shares(mask: Mask, output: str | None) -> tuple[float, float]:
    """(kept entries outside layer `output`, kept entries in it), each as a fraction of all entries: the
    `pool` and `output` of the IMP arithmetic in schedule.py."""
    total = sum(m.numel() for m in mask.values())
    if not total:
        return 1.0, 0.0
    kept_out = int(mask[output].sum()) if output in mask else 0
    return (sum(int(m.sum()) for m in mask.values()) - kept_out) / total, kept_out / total


def collapsed(mask: Mask) -> list[str]:
    """Layers with no weight left: the network can no longer pass signal through them."""
    return [n for n, m in mask.items() if m.numel() and not bool(m.any())]


@torch.no_grad()
def apply_(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        if name not in params:
            raise ValueError(f"mask names '{name}', which the model does not have")
        params[name].masked_fill_(~m.to(params[name].device), 0)


def _keep_top(scores: torch.Tensor, alive: torch.Tensor, fraction: float) -> torch.Tensor:
    """Flat bool mask keeping the `round(fraction * total)` highest scores among the alive entries.

    Only alive entries are ranked, so a pruned weight can never come back. The stable sort puts ties in
    index order, so equal scores keep the lowest indices and repeated calls never drift.
    """
    count = min(int(alive.sum()), max(0, round(fraction * alive.numel())))
    index = alive.nonzero().squeeze(1)
    candidates = scores[index]
    # NaN would sort first in a descending sort; it carries no evidence for keeping a weight.
    candidates = torch.where(candidates.isnan(), float("-inf"), candidates)
    order = torch.sort(candidates, descending=True, stable=True).indices[:count]
    keep = torch.zeros_like(alive)
    keep[index[order]] = True
    return keep


def _prune_pool(scores: dict[str, torch.Tensor], mask: Mask, names: list[str], fraction: float) -> Mask:
    """One ranking over the concatenation of `names` (in mask order), on the first layer's device."""
    device = mask[names[0]].device
    dtype = functools.reduce(torch.promote_types, (scores[n].dtype for n in names))
    flat_scores = torch.cat([scores[n].detach().to(device, dtype).reshape(-1) for n in names])
    flat_alive = torch.cat([mask[n].to(device).reshape(-1) for n in names])
    keep = _keep_top(flat_scores, flat_alive, fraction)
    parts = keep.split([mask[n].numel() for n in names])
    return {n: part.reshape(mask[n].shape).to(mask[n].device) for n, part in zip(names, parts, strict=True)}


def _check_prune_args(scores: dict[str, torch.Tensor], mask: Mask, fractions: list[float],
                      scope: str, output: str | None) -> None:
    choice("prune.scope", scope, SCOPES)
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"density must lie in [0, 1], got {f!r}")
    if output is not None and output not in mask:
        raise ValueError(f"output layer '{output}' is not in the mask")
    for name, m in mask.items():
        if name not in scores or scores[name].shape != m.shape:
            raise ValueError(f"scores for '{name}' missing or not of shape {tuple(m.shape)}")


def prune(scores: dict[str, torch.Tensor], mask: Mask, density: float, *, scope: str,
          output: str | None = None, output_density: float | None = None) -> Mask:
    """Keep the highest scores: exact top-k by index among the weights `mask` still keeps.

    `density` is absolute: each layer (scope="layer") or the pool of all non-output layers
    (scope="global") keeps round(density * its total weights). The output layer, if named, always ranks
    alone at `output_density` (None: same as `density`; 1.0: unchanged).
    """
    out_density = density if output_density is None else output_density
    _check_prune_args(scores, mask, [density, out_density], scope, output)
    rest = [n for n in mask if n != output]
    new: Mask = {}
    if scope == "global" and rest:
        new.update(_prune_pool(scores, mask, rest, density))
    elif scope == "layer":
        for name in rest:
            new.update(_prune_pool(scores, mask, [name], density))
    if output is not None:
        new.update(_prune_pool(scores, mask, [output], out_density))
    return {n: new[n] for n in mask}


def hamming(a: Mask, b: Mask) -> float:
    """Normalised Hamming distance: the fraction of entries on which two masks disagree."""
    if a.keys() != b.keys():
        raise ValueError(f"masks name different layers: {sorted(a.keys() ^ b.keys())}")
    differ = sum(int((a[n] != b[n].to(a[n].device)).sum()) for n in a)
    total = sum(m.numel() for m in a.values())
    return differ / total if total else 0.0


def _random_positions(numel: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Flat bool tensor with exactly `count` True entries at uniformly random positions."""
    keep = torch.zeros(numel, dtype=torch.bool, device=generator.device)
    keep[torch.randperm(numel, generator=generator, device=generator.device)[:count]] = True
    return keep


def shuffle(mask: Mask, generator: torch.Generator) -> Mask:
    """Control: permute the mask within each layer (same per-layer counts, new positions)."""
    return {n: _random_positions(m.numel(), int(m.sum()), generator).reshape(m.shape).to(m.device)
            for n, m in mask.items()}


def random_like(mask: Mask, generator: torch.Generator, *, output: str | None = None) -> Mask:
    """Control: a uniformly random mask with the same global count over the non-output layers.

    The output layer keeps its own count (placed at random), since it is pruned at its own rate.
    """
    rest = [n for n in mask if n != output]
    kept, total = counts({n: mask[n] for n in rest})
    parts = _random_positions(total, kept, generator).split([mask[n].numel() for n in rest])
    new = {n: p.reshape(mask[n].shape).to(mask[n].device) for n, p in zip(rest, parts, strict=True)}
    if output is not None and output in mask:
        new.update(shuffle({output: mask[output]}, generator))
    return {n: new[n] for n in mask}


def refit(mask: Mask, model: nn.Module, generator: torch.Generator) -> Mask:
    """Ticket transfer: carry a saved mask onto `model`, in the model's layer order and devices.

    A layer whose shape changed (say the output layer for another class count) gets a fresh random mask
    at the saved layer's density; layer names must match exactly.
    """
    weights, with_bias = prunable(model), prunable(model, bias=True)
    bias = any(n in with_bias and n not in weights for n in mask)
    params = with_bias if bias else weights
    for name in params:
        if name not in mask:
            raise ConfigError(f"prune.init_mask: the mask file has no layer '{name}' of this model")
    for name in mask:
        if name not in params:
            raise ConfigError(f"prune.init_mask: the model has no prunable layer '{name}' of the mask file")
    out: Mask = {}
    for name, p in params.items():
        saved = mask[name]
        if saved.shape == p.shape:
            out[name] = saved.to(p.device, torch.bool).clone()
        else:
            count = round(int(saved.sum()) / max(saved.numel(), 1) * p.numel())
            out[name] = _random_positions(p.numel(), count, generator).reshape(p.shape).to(p.device)
    return out
