"""Assembling the Ray Tune run of a sweep: Optuna searcher, ASHA, stoppers, failure handling, resources.

- `TicketOptunaSearch` (searcher.py, built in study.py) tells Optuna PRUNED (not COMPLETE) for trials the scheduler
  stopped, so TPE does not learn from truncated values as if they were final (Ray hard-codes COMPLETE);
  FAIL for trials that diverged; and keeps the study consistent when a resumed sweep restores it.
- ASHA compares trials at equal cumulative epochs (`epochs_total`) on `val_score`.
- `CollapseStopper` ends a trial whose network lost a whole layer: it cannot recover.
- Ray's result files of each trial (`result.json`, read by `search/tune/record.py` and Ray's ResultGrid;
  `progress.csv`) are kept, but not its TensorBoard event files: `TBXLoggerCallback` costs the driver 1.1 ms of
  CPU per result, six times the JSON file (docs/CLUSTER.md "Capacity"), so Tune's automatic loggers are off and
  the two kept are passed explicitly (`TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0` in the environment brings
  TensorBoard back).
- Checkpoints come at level boundaries; `FailureConfig` restarts a failed trial from its last level
  (a lost node, a full disk); a diverged trial ends without a retry, since it would diverge again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from search.sweep.file import Sweep
from search.tracking.outbox import injected_delay_s
from search.tracking.sink import MlflowSink
from search.tracking.store import Tracking
from search.tune import algorithms
from search.tune.record import trial_dirname
from search.tune.study import param_space, searcher
from trainables.trainable import ticket_trial

MAX_FAILURES = 2  # restarts of a failed trial from its last level checkpoint
# Every level checkpoint is kept (num_to_keep=None): a driver that dies leaves Ray's experiment snapshot a
# few seconds behind its trials, and a resumed trial restores the checkpoint that snapshot names; with
# num_to_keep=2, two faster levels had already deleted it ("does not exist on storage anymore").
AUTO_LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"  # Ray's: "1" = add no CSV/JSON/TensorBoard logger itself
SCRATCH_ENV = "TICKET_SEARCH_SCRATCH"  # read by the driver, handed to trials: where they stage files


class CollapseStopper(tune.Stopper):
    """Stop a trial as soon as a level reports layer collapse."""

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get("collapsed"))

    def stop_all(self) -> bool:
        return False


def scheduler(sweep: Sweep) -> TrialScheduler:
    """The sweep's trial scheduler; max_t is never 0 (search/sweep/budget.py derives it from the levels)."""
    args = algorithms.SchedulerArgs(max_t=math.ceil(sweep.max_t), grace_period=sweep.grace_period,
                                    reduction_factor=sweep.reduction_factor)
    return algorithms.scheduler(sweep.scheduler, args)


def trainable(sweep: Sweep, tracking: Tracking) -> Any:
    scratch = os.environ.get(SCRATCH_ENV, "")
    sink = MlflowSink(tracking, scratch, injected_delay_s())  # the delay: tests force the stop-vs-write race
    fn = tune.with_parameters(ticket_trial, sink=sink, scratch=scratch)
    resources: dict[str, float] = {"cpu": sweep.cpu, "gpu": sweep.gpu}
    return tune.with_resources(fn, resources)


def loggers(callbacks: list[tune.Callback]) -> list[tune.Callback]:
    """`callbacks` plus Ray's JSON and CSV result loggers; Tune's automatic ones (which add TensorBoard's) off,
    unless the environment says otherwise (see the module docstring)."""
    os.environ.setdefault(AUTO_LOGGERS_ENV, "1")
    kept = [c for c in (JsonLoggerCallback(), CSVLoggerCallback())
            if not any(isinstance(have, type(c)) for have in callbacks)]
    return [*callbacks, *kept]


def build_tuner(sweep: Sweep, tracking: Tracking, callbacks: list[tune.Callback], *, fn: Any = None,
                ) -> tune.Tuner:
    """The sweep's Tuner; `fn` replaces the ticket trainable (benchmarks/capacity_driver.py drives the same
    searcher, scheduler, stopper and callbacks with trials that only report)."""
    search_alg = ConcurrencyLimiter(searcher(sweep), max_concurrent=sweep.max_concurrent)
    return tune.Tuner(
        fn if fn is not None else trainable(sweep, tracking),
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler(sweep),
                                    num_samples=sweep.num_samples, reuse_actors=True,
                                    time_budget_s=sweep.time_limit_s or None,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=sweep.ray_storage, stop=CollapseStopper(), callbacks=loggers(callbacks),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None), verbose=0),  # every level: see above
    )


def restore_tuner(sweep: Sweep, tracking: Tracking, callbacks: list[tune.Callback]) -> tune.Tuner:
    """Continue an interrupted sweep: Ray's experiment state plus the persisted Optuna study."""
    path = str(Path(sweep.ray_storage) / sweep.name)
    tuner = tune.Tuner.restore(path, trainable=trainable(sweep, tracking), resume_unfinished=True,
                               resume_errored=True, param_space=param_space(sweep))
    # callbacks are not restored with the experiment: hand them in again
    internal = tuner._local_tuner  # noqa: SLF001
    assert internal is not None
    internal._run_config.callbacks = loggers(callbacks)  # noqa: SLF001
    return tuner
