"""The pruning-at-init sanity checks (Frankle et al., ICLR 2021): the `invert` control's mask.

`invert` keeps the *lowest*-scored weights at the ticket's per-layer counts, among the weights that were
candidates when the ticket was drawn. Beside `shuffle` (same per-layer counts, random positions) and `reinit`
(same mask, fresh weights), it asks whether a mask carries per-weight information or only layer densities:
if the ticket beats `shuffle` (trainables/io/results.py records the margin and its interval), the positions
matter. The lottery draws the invert mask from the same scores as the ticket's (trainables/lottery.py).

Example:
    >>> scores = {"fc.weight": torch.tensor([4.0, 3.0, 2.0, 1.0])}
    >>> ticket = {"fc.weight": torch.tensor([True, True, False, False])}
    >>> invert(scores, {"fc.weight": torch.ones(4, dtype=torch.bool)}, ticket)["fc.weight"].tolist()
    [False, False, True, True]
"""

from __future__ import annotations

import torch

from trainables.pruning import structure as st
from trainables.pruning.masks import Mask
from trainables.pruning.structure import Structure


def _keep_lowest(scores: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """Flat bool mask keeping the `count` lowest scores among the alive entries (ties: lowest index)."""
    index = alive.reshape(-1).nonzero().squeeze(1)
    candidates = scores.reshape(-1)[index].to(torch.float64)
    candidates = torch.where(candidates.isnan(), float("inf"), candidates)  # NaN is no evidence to keep
    order = torch.sort(candidates, stable=True).indices[:min(count, index.numel())]
    keep = torch.zeros(alive.numel(), dtype=torch.bool, device=alive.device)
    keep[index[order]] = True
    return keep.reshape(alive.shape)


def invert(scores: dict[str, torch.Tensor], candidates: Mask, ticket: Mask) -> Mask:
    """Per layer, the `ticket[n].sum()` lowest-scored entries among `candidates[n]`."""
    out: Mask = {}
    for name, kept in ticket.items():
        alive = candidates[name].to(kept.device)
        out[name] = _keep_lowest(scores[name].detach().to(kept.device), alive, int(kept.sum()))
    return out


def inverted(scores: dict[str, torch.Tensor], candidates: Mask, ticket: Mask, structure: str | Structure,
             output: str | None) -> Mask:
    """The `invert` control's mask under any `prune.structure`: the lowest `scores` among `candidates` at the
    ticket's per-layer counts (whole rows or N:M groups for a structured ticket)."""
    if str(structure) == "unstructured":
        return invert(scores, candidates, ticket)
    return st.invert(scores, candidates, ticket, structure, output)
