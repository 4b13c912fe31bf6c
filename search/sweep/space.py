"""The search space of a sweep handed to Optuna: `Dim`, a define-by-run function, the sampler, and the
ticket a trial's parameters describe. (search/spacefile.py reads and checks `[space]` tables.)

A dim is a float/int range over one dotted Ticket key (optionally log-scaled or stepped) or a list of
choices. A dim with `when` is sampled only when every condition key's current value (sampled earlier in
this trial, else the base ticket's) is one of its allowed values, so `prune.rewind_iter` can exist only
for `prune.method = imp`. Parameter names are the dotted keys, as everywhere else.

Example:
    >>> import optuna
    >>> from search.sweepfile import load_sweep
    >>> sweep = load_sweep("sweeps/mnist1d.toml")
    >>> study = optuna.create_study(sampler=sampler(sweep), direction="maximize")
    >>> trial = study.ask()
    >>> define_by_run(sweep)(trial)
    >>> ticket = config_of(trial.params, sweep)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import optuna

from trainables.config import ConfigError, Ticket

if TYPE_CHECKING:
    from search.sweep.file import Sweep


@dataclass(frozen=True)
class Dim:
    """One searched key: a range (`kind` float or int) or `choices` (`kind` categorical).

    `when` = ((key, allowed values), ...); values are canonical (typed as the Ticket types them,
    list-valued keys as comma text, since Optuna choices must be scalars).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def holds(self, current: Mapping[str, Any]) -> bool:
        """Whether this dim is sampled, given the trial's current values of every key."""
        return all(current[key] in allowed for key, allowed in self.when)

    def to_toml(self) -> dict[str, Any]:
        """The inline table a sweep file would hold for this dim."""
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high)
            if self.log:
                out["log"] = True
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {key: list(allowed) for key, allowed in self.when}
        return out


# ---- smoke runs and budgets --------------------------------------------------------------------------

def clip_space(dims: tuple[Dim, ...], caps: Mapping[str, int]) -> tuple[tuple[Dim, ...], dict[str, Any]]:
    """Dims over capped keys clipped to the caps; a dim left with one value is dropped and returned as a
    fixed value for the base ticket."""
    kept: list[Dim] = []
    fixed: dict[str, Any] = {}
    for dim in dims:
        cap = caps.get(dim.key)
        if cap is None:
            kept.append(dim)
            continue
        if dim.kind == "categorical":
            new = replace(dim, choices=tuple(dict.fromkeys(_cap(c, cap) for c in dim.choices)))
            single = len(new.choices) == 1
            value = new.choices[0]
        else:
            low, high = min(_bound(dim.low), cap), min(_bound(dim.high), cap)
            if dim.step:  # keep high - low a multiple of the step
                high = low + math.floor((high - low) / dim.step) * dim.step
            new, single, value = replace(dim, low=low, high=high), low >= high, low
        if single:
            fixed[dim.key] = value
        else:
            kept.append(new)
    return tuple(kept), fixed


def _cap(value: Any, cap: int) -> Any:
    return min(value, cap) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _bound(value: float | None) -> float:
    if value is None:
        raise ValueError("a range dim without bounds")
    return value


def values(dims: tuple[Dim, ...], base: Ticket, key: str) -> list[float]:
    """The values `key` can take in any trial, as far as bounds go: the base value (unless unset) and each
    dim's low and high, or its choices."""
    value = base.flat()[key]
    out = [] if value is None else [float(value)]
    for dim in dims:
        if dim.key == key:
            out += ([float(c) for c in dim.choices if c is not None] if dim.kind == "categorical"
                    else [_bound(dim.low), _bound(dim.high)])
    return out


def upper(dims: tuple[Dim, ...], base: Ticket, key: str) -> float:
    """The largest value `key` can take in any trial (base value or any dim's high or choice)."""
    return max(values(dims, base, key))


def lower(dims: tuple[Dim, ...], base: Ticket, key: str) -> float:
    """The smallest value `key` can take in any trial (base value or any dim's low or choice)."""
    return min(values(dims, base, key))


# ---- Optuna ------------------------------------------------------------------------------------------

def define_by_run(sweep: Sweep) -> Callable[[optuna.Trial], dict[str, Any] | None]:
    """A define-by-run space for `OptunaSearch`: suggests each dim in file order, skipping dims whose
    `when` does not hold, and returns None (the base ticket supplies every other key)."""
    dims = sweep.space
    base = {key: _scalar(value) for key, value in sweep.base.flat().items()}

    def space(trial: optuna.Trial) -> dict[str, Any] | None:
        current = dict(base)
        for dim in dims:
            if dim.holds(current):
                current[dim.key] = suggest(trial, dim)
        return None

    return space


def _scalar(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def suggest(trial: optuna.Trial, dim: Dim) -> Any:
    """One Optuna suggestion for `dim` (keyword arguments, as Optuna 5 wants)."""
    if dim.kind == "categorical":
        return trial.suggest_categorical(name=dim.key, choices=list(dim.choices))
    low, high = _bound(dim.low), _bound(dim.high)
    if dim.kind == "int":
        return trial.suggest_int(name=dim.key, low=int(low), high=int(high), step=int(dim.step or 1),
                                 log=dim.log)
    return trial.suggest_float(name=dim.key, low=low, high=high, step=dim.step, log=dim.log)


def _tpe(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if not any(dim.when for dim in sweep.space):
        # Optuna 5 defaults: multivariate for one objective, constant liar for parallel trials
        return optuna.samplers.TPESampler(seed=sweep.seed)
    # Conditional spaces: group decomposition lets multivariate TPE model each branch (imp / init)
    # jointly instead of falling back to independent sampling for the conditional keys.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=sweep.seed, multivariate=True, group=True)


def _gp(sweep: Sweep) -> optuna.samplers.BaseSampler:
    from optuna.samplers import GPSampler  # needs torch and scipy when it samples

    return GPSampler(seed=sweep.seed)


def _nsga2(sweep: Sweep) -> optuna.samplers.BaseSampler:
    # Optuna's default population (50) exceeds small budgets, which would make NSGA-II pure random
    # search; a quarter of the budget gives a few generations.
    population = min(50, max(4, sweep.num_samples // 4))
    return optuna.samplers.NSGAIISampler(seed=sweep.seed, population_size=population)


SAMPLERS: dict[str, Callable[[Sweep], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda sweep: optuna.samplers.RandomSampler(seed=sweep.seed),
    "gp": _gp,
    "nsga2": _nsga2,
}


def sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the sweep names, seeded with its seed."""
    if sweep.sampler not in SAMPLERS:
        raise ConfigError(f"[search] sampler: unknown value '{sweep.sampler}'; "
                          f"valid choices: {', '.join(SAMPLERS)}")
    return SAMPLERS[sweep.sampler](sweep)


def config_of(trial_params: Mapping[str, Any], sweep: Sweep) -> Ticket:
    """The ticket one trial searches: the base with the trial's sampled keys."""
    return sweep.base.replace(**trial_params)
