"""Structured and semi-structured masks: `prune.structure = unstructured | channel | n:m`.

- `unstructured`: any weight (masks.prune).
- `channel`: whole rows along a weight's first dimension: output channels of a convolution, neurons of a
  linear layer. A row's score is the sum of the scorer over its weights (scorer `bn_scale`: the scale of
  the BatchNorm that follows, as in network slimming). The output layer stays unstructured at its own rate:
  removing a row there would remove a class.
  Each layer (scope `layer`) keeps round(density * rows) rows; the global pool keeps the best-scored rows
  while their weights stay within half a row of density * pool weights: a density is exact within one row.
  In a residual network the layers whose outputs meet in an addition (trainables/pruning/groups.py) keep the
  same channels: their rows of one channel are one unit, scored by the sum, kept or removed together, and at
  scope `layer` the group is one layer. `of(structure, model)` finds the groups; a bare `channel` has none.
- `n:m`: at most n of every m consecutive weights along the input dimension (a convolution's groups run
  over input channels at each kernel position; 2:4 is what GPUs accelerate). The top-n of every group are
  the candidates; the level's density is then taken among them, so a mask's density is min(density, n/m).

The controls keep the structure: `shuffle` and `random` are the same pruner fed random scores (per layer at
the ticket's counts, or over the pool at its density), `invert` the pruner fed the negated scores.

Example:
    >>> s = parse("2:4")
    >>> w = {"fc.weight": torch.tensor([[4.0, 3.0, 2.0, 1.0]])}
    >>> prune(w, {"fc.weight": torch.ones(1, 4, dtype=torch.bool)}, 1.0, scope="layer", structure=s)["fc.weight"]
    tensor([[ True,  True, False, False]])
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from trainables import config
from trainables.pruning import masks as mk
from trainables.pruning.groups import channel_groups
from trainables.pruning.masks import Mask
from trainables.typed import ConfigError

KINDS = ("unstructured", "channel", "n:m")
_NM = re.compile(r"(\d+):(\d+)")


@dataclass(frozen=True)
class Structure:
    kind: str  # unstructured | channel | n:m
    n: int = 0
    m: int = 0
    groups: tuple[tuple[str, ...], ...] = ()  # channel: weight names whose rows are kept together

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "n:m" else self.kind


def parse(text: str | Structure) -> Structure:
    """`unstructured`, `channel` or `N:M` with 0 < N < M (e.g. 2:4); ConfigError naming prune.structure."""
    if isinstance(text, Structure):
        return text
    if text in ("unstructured", "channel"):
        return Structure(text)
    match = _NM.fullmatch(text)
    if match and 0 < int(match[1]) < int(match[2]) <= 64:
        return Structure("n:m", int(match[1]), int(match[2]))
    raise ConfigError(f"prune.structure: {text!r} is not one of unstructured, channel, n:m (N:M with "
                      f"0 < N < M <= 64, e.g. 2:4)")


_GROUPS: dict[tuple[type, tuple[tuple[str, tuple[int, ...]], ...]], tuple[tuple[str, ...], ...]] = {}


def of(text: str | Structure, model: nn.Module) -> Structure:
    """The structure for `model`: a `channel` structure carries the model's residual channel groups."""
    s = parse(text)
    if s.kind != "channel":
        return s
    key = (type(model), tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))
    if key not in _GROUPS:  # tracing takes milliseconds, but every level of every replicate asks
        _GROUPS[key] = channel_groups(model)
    return Structure("channel", groups=_GROUPS[key])


def units(names: list[str], structure: str | Structure) -> list[list[str]]:
    """`names` in the units pruned together: each channel group (its members among `names`), then one
    unit per other name, in `names`' order."""
    s = parse(structure)
    grouped = [[n for n in g if n in names] for g in s.groups] if s.kind == "channel" else []
    grouped = [g for g in grouped if g]
    taken = {n for g in grouped for n in g}
    return grouped + [[n] for n in names if n not in taken]


def _check(t: config.Ticket) -> None:
    parse(t.prune.structure)


config.register_check(_check)


# ---- channel -------------------------------------------------------------------------------------------

def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)


def _prune_rows(scores: dict[str, torch.Tensor], mask: Mask, names: list[str], density: float) -> Mask:
    """Keep whole rows among the alive ones, best row score (sum over the row's alive weights) first, while
    their weights stay within half a row of density * all weights of `names`."""
    device = mask[names[0]].device
    alive = [_rows(mask[n]).to(device).any(1) for n in names]
    row_scores = [(_rows(scores[n].detach().to(device, torch.float64)) * _rows(mask[n]).to(device)).sum(1)
                  for n in names]
    sizes = torch.cat([torch.full((a.numel(),), _rows(mask[n]).shape[1], device=device)
                       for n, a in zip(names, alive, strict=True)])
    flat_scores, flat_alive = torch.cat(row_scores), torch.cat(alive)
    flat_scores = torch.where(flat_alive & ~flat_scores.isnan(), flat_scores, float("-inf"))
    budget = density * int(sizes.sum())
    order = torch.sort(flat_scores, descending=True, stable=True).indices
    order = order[flat_alive[order]]
    # a row is kept while the budget covers at least half of it: nearest whole rows (round(density * rows)
    # for one layer), a prefix of the ranking
    fits = torch.cumsum(sizes[order], 0) - sizes[order] / 2 <= budget + 1e-9
    keep_rows = torch.zeros_like(flat_alive)
    keep_rows[order[fits]] = True
    out: Mask = {}
    for n, part in zip(names, keep_rows.split([a.numel() for a in alive]), strict=True):
        out[n] = (part[:, None] & _rows(mask[n]).to(device)).reshape(mask[n].shape).to(mask[n].device)
    return out


def _join(tensors: dict[str, torch.Tensor], parts: list[list[str]]) -> dict[str, torch.Tensor]:
    """One (rows, columns) tensor per unit: its members' rows side by side (a channel's weights in every layer)."""
    return {"+".join(p): torch.cat([_rows(tensors[n]) for n in p], 1) if len(p) > 1 else tensors[p[0]]
            for p in parts}


def _split(joined: Mask, parts: list[list[str]], like: Mask) -> Mask:
    out: Mask = {}
    for p in parts:
        key = "+".join(p)
        if key not in joined:
            continue
        if len(p) == 1:
            out[p[0]] = joined[key]
            continue
        pieces = joined[key].split([_rows(like[n]).shape[1] for n in p], 1)
        out.update({n: piece.reshape(like[n].shape) for n, piece in zip(p, pieces, strict=True)})
    return out


# ---- n:m -----------------------------------------------------------------------------------------------

def nm_groups(t: torch.Tensor, m: int) -> tuple[torch.Tensor, int]:
    """(..., groups, m) view along the input dimension (padded to a multiple of m), and the pad."""
    x = t.unsqueeze(1) if t.dim() == 1 else t
    x = x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2)  # (out, kernel positions, in)
    pad = (-x.shape[2]) % m
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:2], -1, m), pad


def _ungroup(g: torch.Tensor, like: torch.Tensor, pad: int) -> torch.Tensor:
    x = g.reshape(*g.shape[:2], -1)
    if pad:
        x = x[..., :-pad]
    x = x.transpose(1, 2)
    return x.reshape(like.shape)


def nm_candidates(scores: torch.Tensor, alive: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The alive entries that rank in the top n of their group of m (ties: lowest index)."""
    s = torch.where(alive, scores.detach().to(torch.float64), float("-inf"))
    s = torch.where(s.isnan(), float("-inf"), s)
    gs, pad = nm_groups(s, m)
    ga, _ = nm_groups(alive.to(torch.float64), m)
    # stable descending sort: ranks by score, ties in index order
    order = torch.sort(gs, dim=-1, descending=True, stable=True).indices
    top = torch.zeros_like(ga, dtype=torch.bool).scatter(-1, order[..., :n], True)
    return _ungroup(top & (ga > 0), alive, pad)


def prune(scores: dict[str, torch.Tensor], mask: Mask, density: float, *, scope: str,
          output: str | None = None, output_density: float | None = None,
          structure: str | Structure = "unstructured") -> Mask:
    """masks.prune under a structure: same arguments, densities absolute (see the module docstring)."""
    s = parse(structure)
    if s.kind == "unstructured":
        return mk.prune(scores, mask, density, scope=scope, output=output, output_density=output_density)
    if s.kind == "n:m":
        narrowed = {n: nm_candidates(scores[n], m.to(scores[n].device), s.n, s.m).to(m.device)
                    for n, m in mask.items()}
        return mk.prune(scores, narrowed, density, scope=scope, output=output, output_density=output_density)
    out_density = density if output_density is None else output_density
    new: Mask = {}
    parts = units([n for n in mask if n != output], s)
    joined_scores, joined = _join(scores, parts), _join(mask, parts)
    if scope == "global" and parts:
        new.update(_split(_prune_rows(joined_scores, joined, list(joined), density), parts, mask))
    elif scope == "layer":
        for key in joined:
            new.update(_split(_prune_rows(joined_scores, joined, [key], density), parts, mask))
    else:
        mk.prune(scores, mask, density, scope=scope)  # the scope's own error
    if output is not None:
        new.update(mk.prune(scores, {output: mask[output]}, out_density, scope="layer"))
    return {n: new[n] for n in mask}


def bn_scale(model: nn.Module, mask: Mask, ctx: object) -> dict[str, torch.Tensor]:
    """Scorer `bn_scale`: |gamma| of the BatchNorm that follows a layer, spread evenly over each row (a row's sum
    is its channel's |gamma|, the network-slimming criterion); |w| for a layer no BatchNorm follows."""
    modules = list(model.named_modules())
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name in mask:
        layer = name.rpartition(".")[0]
        w = params[name].detach()
        follows = [m for _, m in modules[[n for n, _ in modules].index(layer) + 1:]
                   if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.Conv2d | nn.Linear)][:1]
        bn = follows[0] if follows and isinstance(follows[0], nn.BatchNorm1d | nn.BatchNorm2d) else None
        if bn is not None and bn.weight is not None and bn.num_features == w.shape[0]:
            per_row = bn.weight.detach().abs() / max(w[0].numel(), 1)
            out[name] = per_row.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()
        else:
            out[name] = w.abs().clone()
    return out


# ---- controls that keep the structure --------------------------------------------------------------------

def per_layer(scores: dict[str, torch.Tensor], candidates: Mask, counts: Mask, structure: str | Structure,
              output: str | None = None) -> Mask:
    """Each layer keeps the best `scores` among `candidates` at the kept count of `counts` (its density)."""
    out: Mask = {}
    for part in units(list(counts), structure):
        d = sum(int(counts[n].sum()) for n in part) / max(sum(counts[n].numel() for n in part), 1)
        out.update(prune({n: scores[n] for n in part}, {n: candidates[n] for n in part}, d, scope="layer",
                         output=part[0] if part == [output] else None, structure=structure))
    return out


def control_mask(name: str, ticket: Mask, generator: torch.Generator, output: str | None,
                 structure: str | Structure) -> Mask | None:
    """`shuffle` or `random` under a structure: random scores through the structured pruner. None when the
    control's own mask function serves (unstructured masks; controls that keep the ticket's mask)."""
    if parse(structure).kind == "unstructured" or name not in ("shuffle", "random"):
        return None
    noise = {n: torch.rand(m.shape, generator=generator, device=generator.device).to(m.device)
             for n, m in ticket.items()}
    dense = {n: torch.ones_like(m) for n, m in ticket.items()}
    if name == "shuffle":
        return per_layer(noise, dense, ticket, structure, output)
    if name == "random":
        rest = {n: m for n, m in ticket.items() if n != output}
        out_d = mk.density({output: ticket[output]}) if output in ticket else None
        return prune(noise, dense, mk.density(rest), scope="global", output=output if output in ticket else None,
                     output_density=out_d, structure=structure)
    return None


def invert(scores: dict[str, torch.Tensor], candidates: Mask, ticket: Mask, structure: str | Structure,
           output: str | None = None) -> Mask:
    """The `invert` control under a structure: the lowest scores at the ticket's per-layer counts."""
    return per_layer({n: -s for n, s in scores.items()}, candidates, ticket, structure, output)
