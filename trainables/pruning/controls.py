"""Sanity controls: masks trained beside the ticket to ask "is it the mask *and* the weights, or just the
layer-wise density?" (DESIGN.md section 6).

- `reinit`: the ticket's mask on a fresh random initialisation (new seed per level);
- `shuffle`: the ticket's mask permuted within each layer (same per-layer counts), ticket weights;
- `random`: a random mask at the ticket's global density, ticket weights;
- `invert`: the lowest-scored weights at the ticket's per-layer counts, ticket weights (the pruning-at-init
  sanity check, trainables/pruning/sanity.py): its mask is drawn by the lottery from the ticket's scores.

A control is a pure mask function (trainables/pruning/masks.py) plus whether it starts from fresh weights:
one `Control` in `CONTROLS`, whose names register themselves as `prune.controls`' valid values. The
lottery assembles a level's members from them (trainables/lottery.py); every member starts at the same
iteration as the ticket and sees the same batches.

Example:
    >>> mask = {"fc.weight": torch.tensor([True, False, True, False])}
    >>> get("shuffle").mask(mask, torch.Generator().manual_seed(0), None)["fc.weight"].sum()
    tensor(2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainables import config
from trainables.pruning import masks as mk
from trainables.pruning.masks import Mask
from trainables.typed import lookup


@dataclass(frozen=True)
class Control:
    """How a control member differs from the ticket: its mask (from the ticket's mask, a generator and the
    output layer's name) and whether it starts from a fresh initialisation instead of the ticket's weights."""

    mask: Callable[[Mask, torch.Generator, str | None], Mask]
    fresh_init: bool = False
    scored: bool = False  # its mask comes from the scores that drew the ticket (the lottery keeps it)


CONTROLS: dict[str, Control] = {
    "reinit": Control(lambda mask, gen, output: mask, fresh_init=True),
    "shuffle": Control(lambda mask, gen, output: mk.shuffle(mask, gen)),
    "random": Control(lambda mask, gen, output: mk.random_like(mask, gen, output=output)),
    "invert": Control(lambda mask, gen, output: mask, scored=True),  # mask: State.invert, drawn with the ticket
}
config.register_names("prune.controls", CONTROLS)


def get(name: str) -> Control:
    return lookup(CONTROLS, "prune.controls", name)
