"""Search spaces under a real in-memory Optuna study: conditional dims appear exactly when their condition
holds, values stay in bounds, every sampler constructs and runs, and sampled params make valid tickets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.sweep.file import Sweep, load_sweep, sweep_from_dict
from search.sweep.space import Dim
from search.tune.study import define_by_run, param_space, sampler
from trainables.config import ConfigError, Ticket
from trainables.trial import trial_ticket

MNIST1D = Path(__file__).parents[2] / "sweeps" / "mnist1d.toml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def config_of(params: dict[str, Any], sweep: Sweep) -> Ticket:
    """The ticket a trial of `sweep` searches, the way Ray and Optuna build it: the param space's constants
    overridden by the trial's suggested params, read by the trial itself (`trial_ticket`)."""
    return trial_ticket({**param_space(sweep), **params})


def run(sweep: Sweep, n: int, directions: list[str] | None = None) -> list[optuna.trial.FrozenTrial]:
    """Ask/tell `n` trials through the sweep's sampler and define-by-run space; a made-up objective."""
    study = optuna.create_study(sampler=sampler(sweep), directions=directions or ["maximize"])
    space = define_by_run(sweep)
    for _ in range(n):
        trial = study.ask()
        assert space(trial) is None
        ticket = config_of(trial.params, sweep)
        values = [ticket.prune.rate + ticket.train.lr, 1 - ticket.prune.rate][: len(study.directions)]
        study.tell(trial, values)
    return study.trials


def in_bounds(dim: Dim, value: Any) -> bool:
    if dim.kind == "categorical":
        return value in dim.choices
    assert dim.low is not None and dim.high is not None
    on_grid = dim.step is None or math.isclose((value - dim.low) / dim.step, round((value - dim.low) / dim.step))
    return dim.low <= value <= dim.high and on_grid and (not dim.log or value > 0)


def test_conditional_dims_appear_exactly_when_their_condition_holds() -> None:
    sweep = load_sweep(MNIST1D)
    trials = run(sweep, 24)
    methods = {t.params["prune.method"] for t in trials}
    assert methods == {"imp", "init"}
    dims = {d.key: d for d in sweep.space}
    for t in trials:
        imp = t.params["prune.method"] == "imp"
        assert ("prune.rewind_iter" in t.params) is imp and ("prune.rate" in t.params) is imp
        assert ("prune.iterations" in t.params) is not imp
        assert all(in_bounds(dims[k], v) for k, v in t.params.items()), t.params
        ticket = config_of(t.params, sweep)
        assert ticket.prune.method == t.params["prune.method"] and ticket.prune.target_density == 0.1


def test_int_float_log_and_step_dims_stay_in_bounds() -> None:
    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
             "prune.rate": {"type": "float", "low": 0.1, "high": 0.5, "step": 0.1},
             "prune.iterations": {"type": "int", "low": 1, "high": 100, "log": True},
             "prune.rewind_iter": {"type": "int", "low": 0, "high": 40, "step": 10},
             "model.widths": [[8, 4], [16]]}
    sweep = sweep_from_dict({"name": "b", "space": space, "objective": {"target_density": 0.1}})
    dims = {d.key: d for d in sweep.space}
    assert dims["model.widths"].choices == ("8,4", "16")  # Optuna choices are scalars; the Ticket re-types
    trials = run(sweep, 20)
    for t in trials:
        assert set(t.params) == set(dims)
        assert all(in_bounds(dims[k], v) for k, v in t.params.items()), t.params
        assert isinstance(t.params["prune.iterations"], int)
        assert config_of(t.params, sweep).model.widths in ((8, 4), (16,))


def test_conditions_read_base_values_and_list_values() -> None:
    space = {"prune.scorer": {"type": "categorical", "choices": ["magnitude", "snip", "synflow"],
                              "when": {"prune.method": "init"}},  # base method is imp: never sampled
             "prune.iterations": {"type": "int", "low": 1, "high": 100,
                                  "when": {"prune.scorer": ["synflow", "magnitude"]}},  # base: magnitude
             "prune.rewind_iter": {"type": "int", "low": 0, "high": 9, "when": {"train.optimizer": "adam"}}}
    sweep = sweep_from_dict({"name": "c", "space": space, "objective": {"target_density": 0.1}})
    for t in run(sweep, 6):
        assert set(t.params) == {"prune.iterations"}
    fixed = sweep_from_dict({"name": "c", "space": space, "objective": {"target_density": 0.1}},
                            ["prune.method=init", "train.optimizer=adam"])
    seen = [t.params for t in run(fixed, 20)]
    assert all("prune.scorer" in p and "prune.rewind_iter" in p for p in seen)
    assert all(("prune.iterations" in p) is (p["prune.scorer"] != "snip") for p in seen)
    assert any(p["prune.scorer"] == "snip" for p in seen)


@pytest.mark.parametrize("name", ["tpe", "random", "gp"])
def test_single_objective_samplers_construct_and_sample(name: str) -> None:
    sweep = load_sweep(MNIST1D, [f"search.sampler={name}", "search.seed=3"])
    made = sampler(sweep)
    expected = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "gp": optuna.samplers.GPSampler}[name]
    assert isinstance(made, expected)
    assert len(run(sweep, 3)) == 3


def test_nsga2_and_tpe_serve_two_objectives() -> None:
    for name in ("nsga2", "tpe"):
        sweep = load_sweep(MNIST1D, ["objective.name=pareto", f"search.sampler={name}"])
        assert sweep.metrics == ["val_score", "sparsity"]
        trials = run(sweep, 6, directions=["maximize", "maximize"])
        assert all(len(t.values) == 2 for t in trials)
    assert isinstance(sampler(sweep_from_dict({"name": "p", "objective": {"name": "pareto"},
                                               "search": {"sampler": "nsga2"}})),
                      optuna.samplers.NSGAIISampler)


def test_same_seed_same_suggestions() -> None:
    sweep = load_sweep(MNIST1D)
    assert [t.params for t in run(sweep, 12)] == [t.params for t in run(sweep, 12)]


def test_config_of_rejects_an_invalid_trial() -> None:
    sweep = load_sweep(MNIST1D)
    with pytest.raises(ConfigError, match=r"prune.rate: 1.5 is outside"):
        config_of({"prune.rate": 1.5}, sweep)
