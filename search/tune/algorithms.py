"""The search algorithms by name: Optuna samplers (`[search] sampler`) and trial schedulers (`[scheduler] name`).

Each is one small factory plus one registry line; the sweep file checks names against these registries
(search/sweep/file.py), the tuner builds from them (tuner.py, searcher.py). Factories take only what they
need (`SamplerArgs`, `SchedulerArgs`), never the whole sweep, so the sweep file can import the names
without importing the tuner. Ray is imported inside the scheduler factories: reading a sweep file must not
pay for it.

Example:
    >>> sampler("nsga2", SamplerArgs(seed=0, num_samples=16, conditional=False)).population_size
    4
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from trainables.typed import lookup


@dataclass(frozen=True)
class SamplerArgs:
    seed: int
    num_samples: int  # the sweep's budget of trials
    conditional: bool  # some dim of the space exists only `when` another key has a value


def _tpe(a: SamplerArgs) -> optuna.samplers.BaseSampler:
    if not a.conditional:
        # Optuna 5 defaults: multivariate for one objective, constant liar for parallel trials
        return optuna.samplers.TPESampler(seed=a.seed)
    # Conditional spaces: group decomposition lets multivariate TPE model each branch (imp / init)
    # jointly instead of falling back to independent sampling for the conditional keys.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=a.seed, multivariate=True, group=True)


def _gp(a: SamplerArgs) -> optuna.samplers.BaseSampler:
    from optuna.samplers import GPSampler  # needs torch and scipy when it samples

    return GPSampler(seed=a.seed)


def _nsga2(a: SamplerArgs) -> optuna.samplers.BaseSampler:
    # Optuna's default population (50) exceeds small budgets, which would make NSGA-II pure random
    # search; a quarter of the budget gives a few generations.
    population = min(50, max(4, a.num_samples // 4))
    return optuna.samplers.NSGAIISampler(seed=a.seed, population_size=population)


SAMPLERS: dict[str, Callable[[SamplerArgs], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda a: optuna.samplers.RandomSampler(seed=a.seed),
    "gp": _gp,
    "nsga2": _nsga2,
}


def sampler(name: str, args: SamplerArgs) -> optuna.samplers.BaseSampler:
    """The Optuna sampler registered as `name`."""
    return lookup(SAMPLERS, "[search] sampler", name)(args)


@dataclass(frozen=True)
class SchedulerArgs:
    max_t: int  # cumulative epochs: a trial reaching it has run every level it may
    grace_period: int
    reduction_factor: float


def _asha(a: SchedulerArgs) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    # ASHA compares trials at equal cumulative epochs (`epochs_total`) on `val_score`.
    return ASHAScheduler(time_attr="epochs_total", metric="val_score", mode="max", max_t=a.max_t,
                         grace_period=min(a.grace_period, a.max_t), reduction_factor=a.reduction_factor)


def _fifo(a: SchedulerArgs) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, Callable[[SchedulerArgs], Any]] = {"asha": _asha, "none": _fifo}


def scheduler(name: str, args: SchedulerArgs) -> Any:
    """The Ray Tune trial scheduler registered as `name` (a `ray.tune.schedulers.TrialScheduler`)."""
    return lookup(SCHEDULERS, "[scheduler] name", name)(args)
