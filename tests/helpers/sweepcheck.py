"""What every fault test checks after a sweep survived its fault: MLflow and Optuna tell one consistent story.

- every trial that finished has a ticket run for each level 0..final, each exactly once (by `ticket_key`);
- no run of the sweep is left RUNNING;
- a trial run's per-evaluation metrics hold each step once (a retried level does not log twice);
- `audit`: MLflow against Ray's own files (result.json, level checkpoints), the way a user would check it.

A helper module, not a test module: `from sweepcheck import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search.tracking import schema as S
from search.tracking import store
from search.tune.study import optuna_storage


def runs_of(uri: str, sweep: str, kind: str) -> list[Run]:
    """Every active run of `kind` (sweep/trial/ticket) in the sweep's experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep)
    assert exp is not None, f"no experiment {sweep}"
    return store.search_all(client, exp.experiment_id, f"tags.{S.KIND} = '{kind}'")


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


# -- Auditing MLflow against Ray's own files, as a user would ------------------------------------------------

def ray_trials(ray_storage: str, sweep: str) -> dict[str, dict[str, Any]]:
    """trial id -> {"rows": Ray's result.json lines, "levels": {level: members}, "done": every level ran},
    read straight from the trial folders (a level counts as finished when Ray holds its result row or its
    level checkpoint; a driver killed outright leaves no result.json for the trials its snapshot missed)."""
    trials: dict[str, dict[str, Any]] = {}
    for folder in sorted(Path(ray_storage, sweep).glob("trial_*")):
        rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()] \
            if (folder / "result.json").is_file() else []
        levels: dict[int, list[str]] = {}
        done = False
        for ckpt in sorted(folder.glob("checkpoint_*")):
            state = json.loads((ckpt / "state.json").read_text())
            done = done or bool(state["done"])
            for result in state["results"]:
                levels[int(result["level"])] = ["ticket", *result.get("controls", {})]
        for row in rows:
            if row.get("level_done"):
                levels.setdefault(int(row["level"]), ["ticket"])
        trials[folder.name.removeprefix("trial_")] = {"rows": rows, "levels": levels, "done": done}
    return trials


def audit(uri: str, ray_storage: str, sweep: str) -> list[str]:
    """Everything in which MLflow disagrees with Ray's record of the sweep; [] when the record is complete.

    - each finished level (and control) has exactly one FINISHED ticket run, with Ray's density and
      validation accuracy, the trial's params, its tags, and (the ticket) mask.safetensors + density.json;
    - no run of the sweep is RUNNING; a trial run is FINISHED exactly when its last result says `final`,
      and KILLED or FAILED with a `status_reason` otherwise;
    - every evaluation row Ray received is in the trial run's history, once."""
    client = MlflowClient(uri)
    problems: list[str] = []
    tickets = runs_of(uri, sweep, S.TICKET)
    by_key = collections.defaultdict(list)
    for run in tickets:
        by_key[(run.data.tags[S.TAG_TRIAL], int(run.data.tags[S.TAG_LEVEL]), run.data.tags[S.TAG_MEMBER])].append(run)
    trial_runs = {r.data.tags[S.TAG_TRIAL]: r for r in runs_of(uri, sweep, S.TRIAL)}
    for kind in (S.SWEEP, S.TRIAL, S.TICKET):
        problems += [f"{kind} run {r.info.run_id} left RUNNING" for r in runs_of(uri, sweep, kind)
                     if r.info.status == "RUNNING"]
    for trial, seen in ray_trials(ray_storage, sweep).items():
        level_rows = {int(r["level"]): r for r in seen["rows"] if r.get("level_done")}
        for level, members in sorted(seen["levels"].items()):
            for member in members:
                runs = by_key.get((trial, level, member), [])
                done = [r for r in runs if r.info.status == "FINISHED"]
                if len(runs) != 1 or len(done) != 1:
                    problems.append(f"trial {trial} level {level} {member}: {len(done)} FINISHED of {len(runs)} "
                                    "ticket run(s), want exactly 1")
                    continue
                problems += _check_ticket_run(client, done[0], level_rows.get(level), member,
                                              f"trial {trial} level {level} {member}")
        run = trial_runs.get(trial)
        if run is None:
            if seen["levels"]:
                problems.append(f"trial {trial}: no trial run, though Ray finished levels {sorted(seen['levels'])}")
            continue
        last = seen["rows"][-1] if seen["rows"] else {}
        status, reason = run.info.status, run.data.tags.get(S.TAG_STATUS_REASON, "")
        final = bool(last.get("final")) or seen["done"]
        if final and status != "FINISHED":
            problems.append(f"trial {trial}: ran every level but its run is {status} ({reason})")
        if not final and (status not in ("KILLED", "FAILED") or not reason):
            problems.append(f"trial {trial}: stopped after levels {sorted(seen['levels'])} but its run is {status} "
                            f"with reason {reason!r}")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epochs_total")]
        if len(steps) != len(set(steps)):
            problems.append(f"trial {trial}: an evaluation step logged twice")
        lost = sorted({int(r["iterations_total"]) for r in seen["rows"] if "iterations_total" in r} - set(steps))
        if lost:
            problems.append(f"trial {trial}: evaluation rows Ray received are missing at steps {lost}")
    return problems


def _check_ticket_run(client: MlflowClient, run: Run, row: dict[str, Any] | None, member: str, name: str) -> list[str]:
    problems = []
    data = run.data
    if "prune.rate" not in data.params or data.tags.get(S.TAG_KEY, "").count("/") != 3:
        problems.append(f"{name}: params or ticket_key missing")
    if any(tag not in data.tags for tag in (*S.DESCRIBING, S.TAG_SWEEP)):
        problems.append(f"{name}: describing tags missing")
    if row is not None and member == "ticket":
        for key in ("density", "val_acc"):
            if key in row and abs(data.metrics.get(key, -1.0) - float(row[key])) > 1e-9:
                problems.append(f"{name}: {key} {data.metrics.get(key)} in MLflow, {row[key]} in Ray")
    if member == "ticket":
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        if not {S.MASK_ARTIFACT, S.DENSITY_ARTIFACT} <= files:
            problems.append(f"{name}: artifacts {sorted(files)} lack the mask or density.json")
    return problems
