"""What every fault test checks after a sweep survived its fault: MLflow and Optuna tell one consistent story.

- every trial that finished has a ticket run for each level 0..final, each exactly once (by `ticket_key`);
- no run of the sweep is left RUNNING;
- a trial run's per-evaluation metrics hold each step once (a retried level does not log twice).

A helper module, not a test module: `from sweepcheck import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import collections
from typing import Any

import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search import schema as S
from search.tuner import optuna_storage

PAGE = 1000


def runs_of(uri: str, sweep: str, kind: str) -> list[Run]:
    """Every active run of `kind` (sweep/trial/ticket) in the sweep's experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep)
    assert exp is not None, f"no experiment {sweep}"
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], f"tags.{S.KIND} = '{kind}'", max_results=PAGE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def ticket_levels(uri: str, sweep: str) -> dict[str, list[int]]:
    """trial id -> levels of its `member=ticket` runs (a level twice appears twice)."""
    levels: dict[str, list[int]] = collections.defaultdict(list)
    for run in runs_of(uri, sweep, S.TICKET):
        if run.data.tags[S.TAG_MEMBER] == "ticket":
            levels[run.data.tags[S.TAG_TRIAL]].append(int(run.data.tags[S.TAG_LEVEL]))
    return dict(levels)


def assert_tickets_exactly_once(uri: str, sweep: str, finished: set[str] | None = None) -> dict[str, list[int]]:
    """Each ticket run once; each trial's levels contiguous from 0; `finished` trials have all of theirs."""
    tickets = runs_of(uri, sweep, S.TICKET)
    keys = collections.Counter(r.data.tags[S.TAG_KEY] for r in tickets)
    twice = [k for k, n in keys.items() if n > 1]
    assert not twice, f"ticket runs logged more than once: {twice}"
    assert all(r.info.status == "FINISHED" for r in tickets), "a ticket run is not FINISHED"
    levels = ticket_levels(uri, sweep)
    for trial, seen in levels.items():
        assert sorted(seen) == list(range(max(seen) + 1)), f"trial {trial}: levels {sorted(seen)} have a gap"
    for trial in finished or set():
        assert trial in levels, f"finished trial {trial} has no ticket run"
    return levels


def assert_nothing_running(uri: str, sweep: str) -> dict[str, list[Run]]:
    """No run of the sweep RUNNING; returns the trial runs by status."""
    by_status: dict[str, list[Run]] = collections.defaultdict(list)
    for kind in (S.SWEEP, S.TRIAL, S.TICKET):
        for run in runs_of(uri, sweep, kind):
            assert run.info.status != "RUNNING", f"{kind} run {run.info.run_id} left RUNNING"
            if kind == S.TRIAL:
                by_status[run.info.status].append(run)
    return dict(by_status)


def trial_run(uri: str, sweep: str, trial_id: str) -> Run:
    found = [r for r in runs_of(uri, sweep, S.TRIAL) if r.data.tags[S.TAG_TRIAL] == trial_id]
    assert len(found) == 1, f"trial {trial_id}: {len(found)} trial runs"
    return found[0]


def metric_steps(uri: str, run_id: str, key: str = "val_acc") -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


def assert_steps_once(uri: str, sweep: str) -> dict[str, int]:
    """Every trial run's per-evaluation history holds each step once; trial id -> number of steps."""
    counts = {}
    for run in runs_of(uri, sweep, S.TRIAL):
        steps = metric_steps(uri, run.info.run_id)
        assert len(steps) == len(set(steps)), f"trial {run.data.tags[S.TAG_TRIAL]}: a step logged twice"
        counts[run.data.tags[S.TAG_TRIAL]] = len(steps)
    return counts


def study_states(storage: str, sweep: str) -> collections.Counter[str]:
    study = optuna.load_study(study_name=sweep, storage=optuna_storage(storage))
    return collections.Counter(t.state.name for t in study.trials)


def study_trials(storage: str, sweep: str) -> list[Any]:
    return optuna.load_study(study_name=sweep, storage=optuna_storage(storage)).trials
