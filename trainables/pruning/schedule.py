"""IMP density arithmetic: the density after L levels, and how many levels a target density needs.

After IMP level L at rate p the pooled layers keep (1-p)^L of their level-0 weights and the output layer
(1-p*o)^L, o = `prune.output_rate` (DESIGN.md section 6); IMP stops at the first level at or below
`prune.target_density`. Pure arithmetic (no torch), shared by the engine (trainables/pruning/imp.py prunes by
it, trainables/lottery.py derives unset `prune.levels` from it), the `run` command (which refuses levels
that cannot reach the target) and the sweep (ASHA's max_t must cover every level any sampled rate needs).

The whole network's density depends on the share of weights the output layer holds, which only a built
model knows: `levels_to_reach` takes it, `levels_bound` holds whatever the share. `levels_needed`,
`planned_levels` and `require_reach` apply it to one search's `prune.*` keys.

Example:
    >>> levels_to_reach(0.1, 0.2)  # the pool alone: 0.8^11 = 0.086
    11
    >>> levels_to_reach(0.1, 0.2, 0.5, pool=0.98, output=0.02)  # 2% of the weights at half the rate
    11
    >>> levels_bound(0.1, 0.2, 0.5)  # enough even for an output layer holding every weight: 0.9^22
    22
"""

from __future__ import annotations

import math

from trainables.config import LEVELS_WITHOUT_TARGET, MAX_LEVELS, ConfigError, PruneConfig

TOLERANCE = 1e-12  # "at or below the target", as the engine tests it


def level_densities(rate: float, output_rate: float, level: int) -> tuple[float, float]:
    """(density of the other layers, density of the output layer) after `level` IMP levels."""
    return (1 - rate) ** level, (1 - rate * output_rate) ** level


def output_density_for(density: float, rate: float, output_rate: float) -> float:
    """The output layer's density matching an overall `density` reached by IMP at `rate` (the output layer at
    its own rate): what pruning at init and Early-Bird give the output layer."""
    if output_rate == 0 or density >= 1:
        return 1.0
    levels = math.log(density) / math.log(1 - rate)
    return (1 - rate * output_rate) ** levels


def pool_density(density: float, output_density: float, output_share: float) -> float:
    """The density of the layers other than the output layer that makes the density of all prunable weights
    `density` when the output layer, holding `output_share` of them, keeps `output_density` (pruning at
    init and Early-Bird: `prune.target_density` means all prunable weights, output layer included)."""
    if output_share <= 0:
        return density
    if output_share >= 1:
        return 1.0
    pool = (density - output_share * output_density) / (1 - output_share)
    if pool < 0:
        raise ConfigError(f"prune.target_density: {density:g} is below what the output layer keeps alone "
                          f"({output_share * output_density:.3g} of all weights at its own rate); raise it or "
                          f"prune.output_rate, or set prune.output_pool=pooled")
    return min(pool, 1.0)


def density_after(level: int, rate: float, output_rate: float = 0.0, *, pool: float = 1.0,
                  output: float = 0.0) -> float:
    """Density of all prunable weights after `level` levels. `pool` and `output` are the fractions of all
    prunable weights kept at level 0 in the pooled layers and in the output layer (a fresh model whose
    output layer holds a share f: 1 - f and f; a transferred mask: less)."""
    pool_d, out_d = level_densities(rate, output_rate, level)
    return pool * pool_d + output * out_d


def levels_to_reach(target: float, rate: float, output_rate: float = 0.0, *, pool: float = 1.0,
                    output: float = 0.0) -> int | None:
    """The fewest levels after which the density is at or below `target` (see `density_after`), or None
    when MAX_LEVELS levels do not reach it (an output layer that is never pruned can hold more)."""
    # Counting up rather than ceil(log t / log(1-p)): exact at powers such as 0.8^2 = 0.64, where the
    # logarithms' ratio lands a hair above the integer.
    for level in range(MAX_LEVELS + 1):
        if density_after(level, rate, output_rate, pool=pool, output=output) <= target + TOLERANCE:
            return level
    return None


def levels_bound(target: float, rate: float, output_rate: float) -> int | None:
    """Levels that reach `target` whatever share of the weights the output layer holds: enough for the
    slower of the pool and the output layer. None when that is no bound: the output layer is never pruned
    (`output_rate` 0), so the target may be out of reach, or MAX_LEVELS do not reach it."""
    if output_rate == 0:
        return None
    pool = levels_to_reach(target, rate)
    output = levels_to_reach(target, rate, output_rate, pool=0.0, output=1.0)
    return None if pool is None or output is None else max(pool, output)


# ---- one search's levels -----------------------------------------------------------------------------

def levels_needed(p: PruneConfig, pool: float = 1.0, output: float = 0.0) -> int | None:
    """The levels IMP needs to reach `p.target_density` (None without a target, or for `init`), given the
    level-0 shares `pool`/`output`. Unset `prune.levels` with a target out of reach is a ConfigError."""
    if p.method != "imp" or p.target_density is None:
        return None
    needed = levels_to_reach(p.target_density, p.rate, p.output_rate, pool=pool, output=output)
    if needed is None and p.levels is None:
        floor = density_after(MAX_LEVELS, p.rate, p.output_rate, pool=pool, output=output)
        raise ConfigError(f"prune.target_density: {p.target_density:g} is out of reach at prune.rate {p.rate:g} "
                          f"and prune.output_rate {p.output_rate:g}: {MAX_LEVELS} levels leave density "
                          f"{floor:.3g}")
    return needed


def planned_levels(p: PruneConfig, needed: int | None) -> int:
    """The last level a search trains: 1 for `init`; for IMP `prune.levels`, or when it is unset the
    `needed` levels (LEVELS_WITHOUT_TARGET without a target). IMP also stops at the first level at or
    below the target, whichever comes first."""
    if p.method == "init":
        return 1
    if p.levels is not None:
        return p.levels
    return LEVELS_WITHOUT_TARGET if needed is None else needed


def require_reach(p: PruneConfig, needed: int | None, pool: float = 1.0, output: float = 0.0) -> None:
    """ConfigError when `prune.levels` and `prune.target_density` are both set and the levels stop short."""
    if p.levels is None or p.target_density is None or p.method != "imp":
        return
    if needed is not None and needed <= p.levels:
        return
    reached = density_after(p.levels, p.rate, p.output_rate, pool=pool, output=output)
    fix = (f"{needed} levels would reach it (or leave prune.levels unset to derive them)" if needed is not None
           else f"no number of levels up to {MAX_LEVELS} does; raise prune.rate")
    raise ConfigError(f"prune.levels: {p.levels} levels at prune.rate {p.rate:g} end at density {reached:.3g}, "
                      f"above prune.target_density {p.target_density:g}; {fix}")
