"""Running a sweep end to end, as a library: `run_sweep(sweep)` and `resume_sweep(name, root)`.

The driver checks what it can before any trial starts (the dataset is there, the tracking store
answers), creates the MLflow experiment and parent run, records the resolved sweep under
`<root>/sweeps/<name>.json` (what `resume` reads), then fits the Tuner.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from search.sweep.file import Sweep
from search.sweep.record import load_record, save_record
from search.sweep.storage import DEFAULT_ROOT
from search.tracking import schema as S
from search.tracking.callbacks import TrackingCallback
from search.tracking.outbox import call_with_retry, quick_http, retry_budget_s
from search.tracking.store import Tracking, ensure_local_store, prepare
from search.tune import capacity, reconcile
from search.tune.reconcile import Reconciliation
from search.tune.recovery import close_orphans, settle_finished, settle_stopped
from search.tune.study import optuna_storage
from search.tune.tuner import build_tuner, restore_tuner
from trainables.config import ConfigError
from trainables.tasks.registry import shapes as task_shapes

# Checkpoints at every level boundary are the design; Ray's warning about frequent snapshots is noise here.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class SweepOutcome:
    sweep: Sweep
    tracking: Tracking
    trials: int
    errored: int
    results: Any  # ray.tune.ResultGrid
    record: Reconciliation  # Ray's durable record against MLflow, after the reconciliation
    endings: dict[str, int]  # trials by final status: FINISHED (every level ran), KILLED (stopped), FAILED


def sweep_params(sweep: Sweep) -> dict[str, Any]:
    """What the parent run records about the sweep itself (the trials record their tickets)."""
    return {S.PARAM_OBJECTIVE: sweep.objective, S.PARAM_TARGET: sweep.target_density, "sampler": sweep.sampler,
            "seed": sweep.seed, "scheduler": sweep.scheduler, "grace_period": sweep.grace_period,
            "reduction_factor": sweep.reduction_factor, "num_samples": sweep.num_samples,
            "max_concurrent": sweep.max_concurrent, "space": ",".join(d.key for d in sweep.space),
            "smoke": sweep.smoke, "cpu": sweep.cpu, "gpu": sweep.gpu, S.PARAM_MAX_INSTABILITY: sweep.max_instability}


def preflight(sweep: Sweep) -> Sweep:
    """Fail before any trial runs: a missing dataset, or a tracking store that does not answer.

    Returns the sweep with a `runs:/` ticket-transfer mask downloaded once, by the driver, under the root."""
    task_shapes(sweep.base)  # the dataset is there, the corpus loads, the environment exists
    ensure_local_store(sweep.tracking_uri)
    try:
        with quick_http():  # seconds, not MLflow's minutes of retries, to say the server is not there
            MlflowClient(sweep.tracking_uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot track", said in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage.tracking_uri: cannot reach {sweep.tracking_uri} ({first[:200]})") from e
    if sweep.base.prune.init_mask.startswith("runs:"):
        from search.results.transfer import INIT_MASKS_DIR, resolve_init_mask

        base = resolve_init_mask(sweep.base, sweep.tracking_uri, cache_dir=Path(sweep.root) / INIT_MASKS_DIR)
        sweep = dataclasses.replace(sweep, base=base)
    return sweep


def init_ray(sweep: Sweep) -> None:
    if ray.is_initialized():
        return
    ray.init(address=sweep.ray_address or "local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)


def run_sweep(sweep: Sweep, *, resume: bool = False, callbacks: list[tune.Callback] | None = None,
              ) -> SweepOutcome:
    """Run (or continue) a sweep; every trial's tickets land in MLflow under the sweep's experiment."""
    sweep = preflight(sweep)
    experiment = Path(sweep.ray_storage) / sweep.name
    if resume and not tune.Tuner.can_restore(str(experiment)):
        raise ConfigError(f"resume: nothing to resume at {experiment}")
    init_ray(sweep)
    sweep = capacity.fit(sweep)  # the cluster is known: a trial that no node can hold fails now, not never starts
    tracking = prepare(sweep.tracking_uri, sweep.name, sweep.artifact_root, sweep_params(sweep), resume=resume)
    if resume:  # what a killed driver left behind (recovery.py)
        close_orphans(tracking)
        if reconcile.enabled():  # its trials' finished levels, from their checkpoints, before Optuna is settled:
            reconcile.reconcile(tracking, sweep.ray_storage, {})  # a trial that ran every level counts as done
        study = _existing_study(sweep)
        if study is not None:
            settle_finished(tracking, study, sweep.metrics)
    save_record(sweep)
    watcher = TrackingCallback(tracking, sweep.time_limit_s)
    cbs = [watcher, *(callbacks or [])]
    tuner = restore_tuner(sweep, tracking, cbs) if resume else build_tuner(sweep, tracking, cbs)
    grid = tuner.fit()
    record = reconcile.reconcile(tracking, sweep.ray_storage, watcher.outcomes) if reconcile.enabled() \
        else Reconciliation()
    study = _existing_study(sweep)
    if study is not None:  # trials Tune ended without telling Optuna (the time budget) are settled too
        settle_finished(tracking, study, sweep.metrics)
        settle_stopped(study, watcher.outcomes)
    _close_parent(tracking, sweep, grid)
    endings = dict(Counter(o.status for o in watcher.outcomes.values()))
    return SweepOutcome(sweep, tracking, len(grid), len(grid.errors), grid, record, endings)


def _existing_study(sweep: Sweep) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=sweep.name, storage=optuna_storage(sweep.optuna_storage))
    except KeyError:  # no trial was ever asked for
        return None


def _close_parent(tracking: Tracking, sweep: Sweep, grid: Any) -> None:
    """FINISHED once every trial ended; an interrupted sweep (Ctrl-C) stays resumable: KILLED, with how."""
    client = MlflowClient(tracking.tracking_uri)
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    budget = retry_budget_s()
    cut_short = len(grid) < sweep.num_samples and not sweep.time_limit_s  # a time budget ends sweeps by design
    if unfinished > 0 or cut_short:
        reason = f"interrupted with {unfinished} trial(s) unfinished; `ticket-search resume {sweep.name}` continues"
        call_with_retry(lambda: client.set_tag(tracking.parent_run_id, S.TAG_STATUS_REASON, reason), "tag", budget)
        call_with_retry(lambda: client.set_terminated(tracking.parent_run_id, "KILLED"), "status", budget)
        return
    call_with_retry(lambda: client.set_terminated(tracking.parent_run_id, "FINISHED"), "status", budget)


def resume_sweep(name: str, root: str | Path = DEFAULT_ROOT, callbacks: list[tune.Callback] | None = None,
                 ) -> SweepOutcome:
    return run_sweep(load_record(name, root), resume=True, callbacks=callbacks)
