"""Capacity (c): what one Optuna suggestion costs the driver as the study grows. Every trial Tune starts asks
the searcher on the driver's one thread, and Optuna's TPE reads every trial of the study from its storage,
intermediate values included, before it samples.

A study in PostgreSQL (the cluster's storage) holds `trials` finished trials of the sweeps/digits.toml space,
each with `values` intermediate values (30 = one per evaluation of a 30-epoch level; 1 = one per level, what
the searcher stores now); the sweep's own sampler and define-by-run space then ask once untimed and ASKS
more, timed (the median is reported). Bulk-loaded
through `Study.add_trials` (what took the time is not what is measured).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

ASKS = 5


@dataclass(frozen=True)
class StudyCell:
    trials: int  # finished trials in the study
    values: int  # intermediate values per trial
    ask_s: float  # median seconds of one ask + the space's suggestions


def measure(storage_url: str, trials: int, values: int, asks: int = ASKS) -> StudyCell:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from search.sweep.file import load_sweep
    from search.tune.study import define_by_run, optuna_storage, sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep = load_sweep(Path(__file__).parents[1] / "sweeps" / "digits.toml", [f"name=study-{trials}-{values}"])
    study = optuna.create_study(storage=optuna_storage(storage_url), sampler=sampler(sweep),
                                study_name=f"{sweep.name}-{time.monotonic_ns()}", direction="maximize")
    dists = {"prune.rate": FloatDistribution(0.2, 0.6), "train.lr": FloatDistribution(0.01, 0.3, log=True),
             "prune.rewind_iter": IntDistribution(0, 40, step=10),
             "prune.scorer": CategoricalDistribution(["magnitude", "snip"])}
    rng = random.Random(0)
    finished = []
    for _ in range(trials):
        params = {"prune.rate": rng.uniform(0.2, 0.6), "train.lr": 10 ** rng.uniform(-2, -0.53),
                  "prune.rewind_iter": rng.choice([0, 10, 20, 30, 40]),
                  "prune.scorer": rng.choice(["magnitude", "snip"])}
        score = rng.uniform(0.8, 0.95)
        finished.append(optuna.trial.create_trial(params=params, distributions=dists, value=score,
                                                  intermediate_values={i: score for i in range(values)}))
    study.add_trials(finished)
    space, took = define_by_run(sweep), []
    for i in range(asks + 1):  # the first, untimed: imports and the sampler's first-call set-up
        began = time.perf_counter()
        trial = study.ask()
        space(trial)
        if i:
            took.append(time.perf_counter() - began)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return StudyCell(trials, values, statistics.median(took))
