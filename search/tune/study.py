"""The sweep's Optuna side: the study's storage, its sampler, the define-by-run space, and the searcher.

The space suggests each dim in file order, skipping dims whose `when` does not hold, so
`prune.rewind_iter` can exist only for `prune.method = imp`; Optuna's parameter names are the dotted keys.
Ray hands the trial `{**param_space, **suggested}` (tuner.py), which `trainables.trial.trial_ticket` reads.

Example:
    >>> from search.sweep.file import load_sweep
    >>> sweep = load_sweep("sweeps/mnist1d.toml")
    >>> study = optuna.create_study(sampler=sampler(sweep), direction="maximize")
    >>> trial = study.ask()
    >>> define_by_run(sweep)(trial)                      # suggests, returns None
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from search.sweep import objectives
from search.sweep.file import Sweep
from search.sweep.space import Dim, bound
from search.sweep.storage import STAGES_OFF
from search.tune import algorithms
from search.tune.searcher import TicketOptunaSearch
from trainables.trial import MEASURE_LATENCY, STAGE_STORE


def optuna_storage(url_or_path: str) -> optuna.storages.BaseStorage:
    """A journal file (the default: only the driver writes it) or an RDB URL (e.g. PostgreSQL)."""
    if "://" in url_or_path:
        return optuna.storages.RDBStorage(url_or_path)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url_or_path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url_or_path))


def sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the sweep names, seeded with its seed."""
    args = algorithms.SamplerArgs(seed=sweep.seed, num_samples=sweep.num_samples,
                                  conditional=any(dim.when for dim in sweep.space))
    return algorithms.sampler(sweep.sampler, args)


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
    low, high = bound(dim.low), bound(dim.high)
    if dim.kind == "int":
        return trial.suggest_int(name=dim.key, low=int(low), high=int(high), step=int(dim.step or 1),
                                 log=dim.log)
    return trial.suggest_float(name=dim.key, low=low, high=high, step=dim.step, log=dim.log)


def param_space(sweep: Sweep) -> dict[str, Any]:
    """Ray's param_space: the base ticket as constants; Optuna's define-by-run values override them per
    trial, and the trial reads the merged dict (`trainables.trial.trial_ticket`)."""
    space = {k: list(v) if isinstance(v, tuple) else v for k, v in sweep.base.flat().items()}
    if sweep.stages != STAGES_OFF:
        space[STAGE_STORE] = sweep.stages  # trials load the levels another trial trained (trainables/staged.py)
    if objectives.get(sweep.objective).measures_latency:
        space[MEASURE_LATENCY] = True  # trials time each level's exported ticket (trainables/io/latency.py)
    return space


class SearchSpace:
    """The sweep's define-by-run space as a picklable object (Ray pickles the searcher with the experiment)."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        return define_by_run(self.sweep)(trial)


def searcher(sweep: Sweep) -> TicketOptunaSearch:
    """Ray's Optuna searcher for the sweep: its objective's metrics and modes, sampler, space and study."""
    objective = objectives.get(sweep.objective)
    metrics, modes = list(objective.metrics), list(objective.modes)
    return TicketOptunaSearch(
        space=SearchSpace(sweep), metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0], sampler=sampler(sweep),
        storage=optuna_storage(sweep.optuna_storage), study_name=sweep.name, num_samples=sweep.num_samples,
        max_instability=sweep.max_instability)
