"""A sweep's budget in levels and epochs: ASHA's max_t, levels that must reach the target, the smoke cut.

`derived_max_t` is the cumulative epochs a trial may need: every level (the dense level 0 included) at the
most epochs any trial trains. Unset `prune.levels` follow each trial's own rate, so they count as many as
the lowest rate, target and output rate need whatever the model (trainables/pruning/schedule.py); ASHA
stops a trial that reaches max_t. `smoke` shrinks any sweep to a one-minute plumbing check: few short
trials on small data (a torchvision dataset becomes synthetic data of its shape), its level cap ending
each trial short of the target on purpose.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from search.sweep.space import Dim, clip_space, lower, upper, values
from trainables.config import LEVELS_WITHOUT_TARGET, MAX_LEVELS, Ticket
from trainables.pruning import schedule
from trainables.tasks.classification.datasets import VISION
from trainables.typed import ConfigError

SMOKE_CAPS = {"train.epochs": 2, "prune.levels": 2, "prune.iterations": 10,
              "prune.rewind_iter": 4}  # a rewind point must stay inside 2 epochs of small data
SMOKE_SIZE = 512  # examples of the synthetic stand-in for a torchvision dataset
SMOKE_TRIALS, SMOKE_CONCURRENT = 4, 2


def smoke(base: Ticket, dims: tuple[Dim, ...]) -> tuple[dict[str, Any], tuple[Dim, ...]]:
    """(flat updates of the base ticket, the clipped space) of a one-minute run."""
    dims, fixed = clip_space(dims, SMOKE_CAPS)
    flat = base.flat()
    updates: dict[str, Any] = {k: cap if flat[k] is None else min(flat[k], cap) for k, cap in SMOKE_CAPS.items()}
    may_init = base.prune.method == "init" or any(d.key == "prune.method" and "init" in d.choices for d in dims)
    if not may_init:  # init needs its target; IMP without one stops at the level cap
        updates["prune.target_density"] = None
    if base.data.name in VISION:  # no files needed: same shape and classes, synthetic
        vision = VISION[base.data.name]
        updates.update({"data.name": "synthetic", "data.input_shape": vision.shape,
                        "data.num_classes": vision.num_classes, "data.size": SMOKE_SIZE})
    return {**updates, **fixed}, dims


def smoke_entries(entries: dict[str, Any]) -> dict[str, Any]:
    """The sweep entries of a smoke run: a few trials, two at a time, ASHA from the first epoch."""
    return {"num_samples": min(entries["num_samples"], SMOKE_TRIALS),
            "max_concurrent": min(entries["max_concurrent"], SMOKE_CONCURRENT), "grace_period": 1, "max_t": 0.0}


def check_levels_reach(base: Ticket, dims: tuple[Dim, ...]) -> None:
    """`prune.levels` fixed in [base] must reach the target at the lowest rate any trial samples. The
    pool's arithmetic alone is a floor for every model (the output layer can only need more levels)."""
    p = base.prune
    targets = values(dims, base, "prune.target_density")
    if p.levels is None or not targets or any(d.key == "prune.levels" for d in dims):
        return
    target, rate = min(targets), lower(dims, base, "prune.rate")
    lowest = dataclasses.replace(p, method="imp", rate=rate, target_density=target)
    try:
        schedule.require_reach(lowest, schedule.levels_to_reach(target, rate))
    except ConfigError as e:
        raise ConfigError(f"[base] {e}") from e


def derived_max_t(base: Ticket, dims: tuple[Dim, ...]) -> float:
    """ASHA's max_t in cumulative epochs (see the module doc)."""
    levels = values(dims, base, "prune.levels")  # given ones: the base's and a searched range
    if base.prune.levels is None:
        targets = values(dims, base, "prune.target_density")
        bound = schedule.levels_bound(min(targets), lower(dims, base, "prune.rate"),
                                      lower(dims, base, "prune.output_rate")) if targets else LEVELS_WITHOUT_TARGET
        levels.append(MAX_LEVELS if bound is None else bound)
    return (max(levels) + 1) * upper(dims, base, "train.epochs")
