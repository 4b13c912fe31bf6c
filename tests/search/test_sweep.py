"""Real sweeps on a local 2-CPU Ray with Optuna, ASHA and a sqlite MLflow store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.results.query import best_tickets
from search.sweep.file import Sweep, sweep_from_dict
from search.sweep.objectives import pareto_front
from search.tracking import schema as S
from search.tune.runner import run_sweep
from search.tune.study import optuna_storage
from trainables.io import maskio
from trainables.pruning import masks as mk

pytestmark = pytest.mark.usefixtures("ray_local")


def sweep_doc(root: Path, name: str, **sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "base": {"data.name": "digits", "model.name": "mlp", "model.widths": "32", "train.epochs": 2,
                 "train.batch_size": 128, "train.device": "cpu"},
        "space": {"prune.rate": {"type": "float", "low": 0.4, "high": 0.7},
                  # a wide lr range: some trials are hopeless, so ASHA has someone to stop
                  "train.lr": {"type": "float", "low": 1e-4, "high": 0.5, "log": True}},
        "objective": {"name": "accuracy_at_density", "target_density": 0.3},
        "search": {"sampler": "tpe", "seed": 0},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "budget": {"num_samples": 6, "max_concurrent": 2},
        "storage": {"root": str(root / "runs")},
    }
    for section, values in sections.items():
        doc[section] = {**doc.get(section, {}), **values} if isinstance(values, dict) else values
    return doc


def ticket_runs(sweep: Sweep) -> list[Any]:
    client = MlflowClient(sweep.tracking_uri)
    exp = client.get_experiment_by_name(sweep.name)
    assert exp is not None
    return client.search_runs([exp.experiment_id], f"tags.{S.KIND} = '{S.TICKET}'", max_results=5000)


def study(sweep: Sweep) -> optuna.Study:
    return optuna.load_study(study_name=sweep.name, storage=optuna_storage(sweep.optuna_storage))


def test_sweep_logs_tickets_stops_poor_trials_and_answers_best(tmp_path: Path) -> None:
    sweep = sweep_from_dict(sweep_doc(tmp_path, "asha"))
    outcome = run_sweep(sweep)
    assert outcome.trials == 6 and outcome.errored == 0

    runs = ticket_runs(sweep)
    assert runs, "no ticket runs logged"
    client = MlflowClient(sweep.tracking_uri)
    for run in [r for r in runs if r.data.tags[S.TAG_MEMBER] == "ticket"][:6]:
        path = client.download_artifacts(run.info.run_id, S.MASK_ARTIFACT, str(tmp_path / run.info.run_id))
        mask = maskio.load(path)
        assert mk.density(mask) > 0
        # the metric is the density of the pool plus output layer, as the mask file holds it
        assert run.data.metrics["density"] == pytest.approx(mk.density(mask), abs=1e-6)
        assert run.data.params["data.name"] == "digits"
        assert {"dataset", "model", "scorer", "sweep"} <= set(run.data.tags)
    keys = [r.data.tags[S.TAG_KEY] for r in runs]
    assert len(keys) == len(set(keys)), "a ticket run was logged twice"

    states = [t.state for t in study(sweep).trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1, states  # ASHA stopped someone, told as PRUNED
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 1, states

    trial_runs = client.search_runs([runs[0].info.experiment_id], f"tags.{S.KIND} = '{S.TRIAL}'")
    assert len(trial_runs) == 6
    assert all(r.info.status in ("FINISHED", "KILLED") for r in trial_runs)  # none left RUNNING
    assert any(S.TAG_STATUS_REASON in r.data.tags for r in trial_runs if r.info.status == "KILLED")

    best = best_tickets(sweep.tracking_uri, sweep="asha", top=3)
    assert best and best == sorted(best, key=lambda r: -r.val_score)
    top = best[0]
    assert top.ticket().data.name == "digits"  # the typed result rebuilds the trial's ticket
    assert best_tickets(sweep.tracking_uri, sweep="asha", max_density=0.35)
    assert all(r.density <= 0.35 for r in best_tickets(sweep.tracking_uri, sweep="asha", max_density=0.35))


def test_pareto_sweep_front_is_non_dominated(tmp_path: Path) -> None:
    doc = sweep_doc(tmp_path, "front", objective={"name": "pareto", "target_density": None},
                    space={"prune.levels": {"type": "int", "low": 1, "high": 4}},
                    budget={"num_samples": 4}, scheduler={"name": "none"}, search={"sampler": "nsga2"})
    doc["objective"].pop("target_density")
    sweep = sweep_from_dict(doc)
    assert sweep.metrics == ["val_score", "sparsity"]
    run_sweep(sweep)
    front = pareto_front(best_tickets(sweep.tracking_uri, sweep="front", top=1000))
    assert front
    for a in front:
        for b in front:
            assert not (b.val_score >= a.val_score and b.sparsity >= a.sparsity
                        and (b.val_score > a.val_score or b.sparsity > a.sparsity))
    best_trials = study(sweep).best_trials  # Optuna's own front over the trials' final tickets
    assert best_trials and all(len(t.values) == 2 for t in best_trials)
