"""IMP level arithmetic: how many levels a target needs (the output layer at its own rate), unset
`prune.levels` derived per search and per sampled rate, and levels that stop short refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from search.sweep.file import Sweep, load_sweep, sweep_from_dict
from search.tune.study import param_space
from trainables.config import ConfigError, Ticket
from trainables.lottery import Lottery
from trainables.pruning import schedule
from trainables.trial import trial_ticket

SWEEPS = Path(__file__).parents[2] / "sweeps"


def config_of(params: dict[str, Any], sweep: Sweep) -> Ticket:
    """The ticket a trial of `sweep` searches, the way Ray and Optuna build it: the param space's constants
    overridden by the trial's suggested params, read by the trial itself (`trial_ticket`)."""
    return trial_ticket({**param_space(sweep), **params})


SMALL = {"model.name": "mlp", "model.widths": "16", "train.epochs": 1, "train.device": "cpu"}  # output: 13.5%


@pytest.mark.parametrize(("target", "rate", "levels"), [(0.64, 0.2, 2), (0.25, 0.5, 2), (0.1, 0.2, 11),
                                                       (0.2, 0.2, 8), (1.0, 0.2, 0), (0.5, 0.5, 1)])
def test_levels_to_reach_is_exact_at_powers(target: float, rate: float, levels: int) -> None:
    # ceil(log 0.64 / log 0.8) is 3 in floating point; counting gives 2
    assert schedule.levels_to_reach(target, rate) == levels
    assert schedule.density_after(levels, rate) <= target + schedule.TOLERANCE
    if levels:
        assert schedule.density_after(levels - 1, rate) > target


def test_the_output_layer_at_its_own_rate_can_need_more_levels() -> None:
    assert schedule.levels_to_reach(0.1, 0.2, 0.5, pool=0.98, output=0.02) == 11  # LeNet-300-100's 2%
    assert schedule.levels_to_reach(0.1, 0.2, 0.5, pool=0.5, output=0.5) == 17
    assert schedule.levels_to_reach(0.1, 0.2, 0.0, pool=0.8, output=0.2) is None  # never pruned: 20% stay
    assert schedule.levels_to_reach(0.05, 0.2, 1.0, pool=0.5, output=0.5) == 14  # same rate: as the pool


@pytest.mark.parametrize("share", [0.0, 0.02, 0.3, 0.9, 1.0])
@pytest.mark.parametrize(("target", "rate", "output_rate"), [(0.1, 0.2, 0.5), (0.2, 0.6, 0.5), (0.01, 0.3, 1.5)])
def test_the_bound_covers_every_output_share(share: float, target: float, rate: float, output_rate: float) -> None:
    bound = schedule.levels_bound(target, rate, output_rate)
    needed = schedule.levels_to_reach(target, rate, output_rate, pool=1 - share, output=share)
    assert bound is not None and needed is not None and needed <= bound
    assert schedule.levels_bound(target, rate, 0.0) is None  # an unpruned output layer may never get there


def test_unset_levels_follow_the_target_and_the_output_share() -> None:
    lot = Lottery(Ticket.from_flat({**SMALL, "prune.target_density": 0.1}))
    pool, output = lot._shares  # noqa: SLF001
    assert output == pytest.approx(16 * 10 / (64 * 16 + 16 * 10))
    assert lot.levels == lot.levels_needed == schedule.levels_to_reach(0.1, 0.2, 0.5, pool=pool, output=output)
    assert lot.levels == 12  # the output layer's 13.5% needs one level more than the pool's 11
    assert Lottery(Ticket.from_flat(SMALL)).levels == 5  # no target: the classic five
    assert Lottery(Ticket.from_flat({**SMALL, "prune.levels": 3, "prune.target_density": 0.1})).levels == 3


def test_unset_levels_with_a_target_out_of_reach_fail_before_training() -> None:
    # the output layer (13.5% of the weights) is never pruned: no number of levels gets under 13.5%
    with pytest.raises(ConfigError, match=r"^prune\.target_density: 0\.1 is out of reach at prune\.rate 0\.2 "
                                          r"and prune\.output_rate 0: 1000 levels leave density 0\.135$"):
        Lottery(Ticket.from_flat({**SMALL, "prune.target_density": 0.1, "prune.output_rate": 0}))


def test_given_levels_short_of_a_given_target_are_refused_on_request() -> None:
    lot = Lottery(Ticket.from_flat({**SMALL, "prune.levels": 4, "prune.target_density": 0.1}))
    with pytest.raises(ConfigError, match=r"^prune\.levels: 4 levels at prune\.rate 0\.2 end at density 0\.443, "
                                          r"above prune\.target_density 0\.1; 12 levels would reach it"):
        lot.require_target_reached()
    Lottery(Ticket.from_flat({**SMALL, "prune.levels": 12, "prune.target_density": 0.1})).require_target_reached()


def test_ids_of_tickets_from_before_unset_levels_are_kept() -> None:
    # prune.levels used to default to 5: a ticket that says 5 and one that leaves it unset are the same
    # search (and id) unless IMP derives the levels from a target
    assert Ticket.from_flat({"prune.levels": 5}).id == Ticket().id
    init = {"prune.method": "init", "prune.target_density": 0.1}
    assert Ticket.from_flat({**init, "prune.levels": 5}).id == Ticket.from_flat(init).id
    imp = {"prune.target_density": 0.1}
    assert Ticket.from_flat({**imp, "prune.levels": 5}).id != Ticket.from_flat(imp).id
    assert Ticket.from_flat({**imp, "prune.levels": "None"}).prune.levels is None  # as MLflow gives it back


def test_sweep_trials_derive_levels_from_their_own_rate_within_max_t() -> None:
    sweep = load_sweep(SWEEPS / "digits.toml")  # rate in [0.2, 0.6], target 0.2, LeNet-300-100
    assert sweep.base.prune.levels is None
    planned = {}
    for rate in (0.2, 0.6):
        t = config_of({"prune.rate": rate}, sweep)
        lot = Lottery(t.replace(**{"train.device": "cpu"}))
        planned[rate] = lot.levels
        assert (lot.levels + 1) * t.train.epochs <= sweep.max_t  # ASHA never stops a trial short
    assert planned == {0.2: 8, 0.6: 2}


def test_sweep_levels_given_short_of_the_target_fail_at_load() -> None:
    doc = {"name": "t", "base": {"prune.levels": 5}, "space": {"prune.rate": {"type": "float", "low": 0.2,
                                                                                "high": 0.6}},
           "objective": {"target_density": 0.1}}
    with pytest.raises(ConfigError, match=r"^sweep: \[base\] prune\.levels: 5 levels at prune\.rate 0\.2 end at "
                                          r"density 0\.328, above prune\.target_density 0\.1; 11 levels would"):
        sweep_from_dict(doc)
    assert sweep_from_dict(doc, ["prune.levels=11"]).max_t == 12 * 10
    assert sweep_from_dict(doc, smoke=True).base.prune.levels == 2  # the smoke cap stops short on purpose
