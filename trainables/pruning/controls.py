"""The members of one level: the ticket per replicate seed, and the sanity controls beside it.

Controls answer "is it the mask *and* the weights, or just the layer-wise density?":
- `reinit`: the ticket's mask on a fresh random initialisation (new seed per level);
- `shuffle`: the ticket's mask permuted within each layer (same per-layer counts), ticket weights;
- `random`: a random mask at the ticket's global density, ticket weights.
Every member starts at the same iteration as the ticket and sees the same batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.pruning import masks as mk
from trainables.training.loop import Member

if TYPE_CHECKING:
    from trainables.lottery import Lottery

CONTROL_SEED = 104_729  # keeps control seeds apart from the ticket's initialisation seeds


def build_members(lot: Lottery, level: int) -> list[Member]:
    """Tickets first (replicate order), then each replicate's controls."""
    p = lot.ticket.prune
    tickets, controls = [], []
    for r in range(p.replicates):
        mask = lot.state.masks[r]
        model = lot.new_model(lot.init_seed(r))
        model.load_state_dict(lot.state.rewind[r])
        tickets.append(Member("ticket", r, model, mask))
        if mk.density(mask) >= 1.0:
            continue  # a dense level has nothing to control for
        output = mk.output_param(model)
        for name in p.controls:
            gen = lot._generator(CONTROL_SEED, r, level, len(name))
            if name == "reinit":
                fresh = lot.new_model(lot.seed(CONTROL_SEED, r, level))
                controls.append(Member(name, r, fresh, mask))
                continue
            twin = lot.new_model(lot.init_seed(r))
            twin.load_state_dict(lot.state.rewind[r])
            other = mk.shuffle(mask, gen) if name == "shuffle" else mk.random_like(mask, gen, output=output)
            controls.append(Member(name, r, twin, other))
    return tickets + controls
