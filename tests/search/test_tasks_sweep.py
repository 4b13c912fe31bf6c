"""Real sweeps of language-model and RL-policy tickets: Ray Tune + Optuna + MLflow end to end, then the
`best` query, the export and the exported ticket loaded back, on a local 2-CPU Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from search.results.export import export_ticket
from search.results.query import best_tickets
from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tune.runner import run_sweep
from trainables.io import maskio
from trainables.io.ticketio import load_ticket
from trainables.pruning import masks as mk

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

LM_BASE = {"data.name": "pydoc", "model.name": "lstm", "model.width": 16, "model.depth": 1, "model.context": 32,
           "train.batch_size": 256, "train.epochs": 1, "train.optimizer": "adam", "train.lr": 0.01,
           "prune.rewind_iter": 5, "train.device": "cpu"}
RL_BASE = {"data.name": "gym:CartPole-v1", "model.name": "mlp", "model.widths": "16,16", "train.optimizer": "adam",
           "train.lr": 0.003, "train.batch_size": 64, "train.epochs": 2, "rl.envs": 4, "rl.rollout_steps": 64,
           "rl.rollouts_per_epoch": 2, "rl.ppo_epochs": 1, "rl.eval_episodes": 3, "prune.rewind_iter": 1,
           "train.device": "cpu"}


def tiny_sweep(root: Path, name: str, base: dict[str, Any]) -> dict[str, Any]:
    """Three trials, up to two IMP levels to reach 30% at rates 0.5-0.6, controls beside the ticket."""
    return {
        "name": name,
        "base": {**base, "prune.controls": "shuffle"},
        "space": {"prune.rate": {"type": "float", "low": 0.5, "high": 0.6},
                  "prune.scorer": ["magnitude", "snip"]},
        "objective": {"name": "accuracy_at_density", "target_density": 0.3},
        "search": {"sampler": "random", "seed": 0},
        "scheduler": {"name": "none"},
        "budget": {"num_samples": 3, "max_concurrent": 2},
        "storage": {"root": str(root / "runs")},
    }


@pytest.mark.parametrize(("name", "base", "dataset"), [("lm", LM_BASE, "pydoc"),
                                                        ("rl", RL_BASE, "gym:CartPole-v1")])
def test_task_sweep_logs_tickets_answers_best_and_exports(tmp_path: Path, name: str, base: dict[str, Any],
                                                          dataset: str) -> None:
    sweep = sweep_from_dict(tiny_sweep(tmp_path, name, base))
    outcome = run_sweep(sweep)
    assert outcome.trials == 3 and outcome.errored == 0

    client = MlflowClient(sweep.tracking_uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.{S.KIND} = '{S.TICKET}'", max_results=1000)
    members = {r.data.tags[S.TAG_MEMBER] for r in runs}
    assert members == {"ticket", "shuffle"}
    for run in runs:
        assert run.data.tags["dataset"] == dataset and run.data.params["data.name"] == dataset
        assert run.data.metrics["collapsed"] == 0.0
        if name == "lm":  # minus a perplexity: below -1; next-token accuracy is a fraction
            assert run.data.metrics["val_score"] < -1 and 0 < run.data.metrics["val_acc"] < 1
        else:  # a mean return of CartPole: at least one step per episode; the loss is its negative
            assert run.data.metrics["val_score"] >= 1
            if run.data.tags[S.TAG_MEMBER] == "ticket":  # control runs carry no loss
                assert run.data.metrics["val_score"] == -run.data.metrics["val_loss"]

    best = best_tickets(sweep.tracking_uri, sweep=name, top=3)
    assert best and best == sorted(best, key=lambda r: -r.val_score)
    assert all(r.density <= 0.3 + 1e-6 for r in best)  # the sweep's target density filters
    assert best[0].ticket().data.name == dataset

    mask_path = client.download_artifacts(best[0].run_id, S.MASK_ARTIFACT, str(tmp_path / "mask"))
    assert mk.density(maskio.load(mask_path)) == pytest.approx(best[0].density, abs=1e-6)
    folder = export_ticket(best[0].run_id, tmp_path / "export", sweep.tracking_uri)
    ticket, model, mask = load_ticket(folder)  # rebuilt from the recorded shapes: no data needed
    assert ticket.data.name == dataset and set(mask) == set(mk.prunable(model))
    params = dict(model.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in mask.items())
    x = torch.zeros(2, 8, dtype=torch.long) if name == "lm" else torch.zeros(2, 4)
    assert torch.isfinite(model(x)).all()
