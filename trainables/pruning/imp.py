"""IMP's pruning step: the mask of level L, drawn from the trained ticket's scores and the level-0 mask.

Densities are absolute (DESIGN.md section 6): after level L at rate p the pool (scope `global`) or each
layer (scope `layer`) keeps its level-0 density times (1-p)^L, the output layer (1-p*o)^L
(trainables/pruning/schedule.py), exact top-k by index among the weights still kept.
"""

from __future__ import annotations

import torch

from trainables.pruning import masks as mk
from trainables.pruning import schedule
from trainables.pruning import structure as st
from trainables.pruning.masks import Mask


def level_mask(scores: dict[str, torch.Tensor], mask: Mask, base: Mask, level: int, rate: float,
               output_rate: float, scope: str, output: str | None,
               structure: str | st.Structure = "unstructured") -> Mask:
    """Mask of IMP level `level`: density base * (1-rate)^level, exact counts, output at its own rate."""
    pool_d, out_d = schedule.level_densities(rate, output_rate, level)
    out_base = mk.density({output: base[output]}) if output in base else 1.0
    if scope == "global":
        pool = {n: b for n, b in base.items() if n != output}
        return st.prune(scores, mask, mk.density(pool) * pool_d, scope="global", output=output,
                        output_density=out_base * out_d, structure=structure)
    new: Mask = {}
    for part in st.units(list(mask), structure):  # layerwise (a channel group is one layer): each keeps
        # base_layer_density * (1-rate)^level
        d = out_base * out_d if part == [output] else mk.density({n: base[n] for n in part}) * pool_d
        new.update(st.prune({n: scores[n] for n in part}, {n: mask[n] for n in part}, d, scope="layer",
                            output=output if part == [output] else None, structure=structure))
    return {n: new[n] for n in mask}
