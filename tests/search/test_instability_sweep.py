"""Instability in the service: recorded on ticket runs, a sweep constraint for Optuna, `best` and the plot."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from search.results.instability_plot import plot_instability
from search.results.query import best_tickets, sweep_tickets
from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tracking.sink import MlflowSink
from search.tracking.store import prepare
from search.tune.study import optuna_storage, searcher
from trainables.config import ConfigError, Ticket
from trainables.lottery import Lottery

TINY = {"train.epochs": 1, "prune.levels": 1, "prune.rate": 0.5, "model.name": "mlp", "model.widths": "16",
        "train.device": "cpu", "prune.instability": True, "prune.instability_alphas": 3}


def _synthetic_ticket(client: MlflowClient, exp: str, trial: str, rewind: int, instability: float) -> str:
    run = client.create_run(exp, tags={S.KIND: S.TICKET, S.TAG_MEMBER: S.MEMBER_TICKET, S.TAG_SWEEP: "stable",
                                       S.TAG_LEVEL: "1", S.PARENT_TAG: trial})
    client.log_batch(run.info.run_id, metrics=[
        Metric(k, v, 0, 0) for k, v in {"density": 0.5, "sparsity": 0.5, "val_score": 0.9 - instability,
                                         "level": 1, "instability_val": instability}.items()])
    client.log_param(run.info.run_id, "prune.rewind_iter", str(rewind))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_stable_sweep_records_ranks_and_plots_instability(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = prepare(uri, "stable", str(tmp_path / "artifacts"),
                 {S.PARAM_OBJECTIVE: "accuracy_at_density", S.PARAM_MAX_INSTABILITY: 0.02})
    torch.set_num_threads(1)
    ticket = Ticket.from_flat(TINY)
    sink = MlflowSink(tr)
    sink.start("real", ticket.flat())
    lottery = Lottery(ticket, on_epoch=sink.epoch)
    measured = []
    for result in lottery.run():
        sink.level(result, lottery.state.rewind[0] if result.level == 0 else None)
        measured.append(result.instability["val"])
    sink.finish("FINISHED")
    recorded = {r.level: r.instability for r in sweep_tickets(uri, "stable")}
    assert recorded == pytest.approx(dict(enumerate(measured)))  # every level's ticket run carries it

    client = MlflowClient(uri)
    stable = _synthetic_ticket(client, tr.experiment_id, "s", 0, 0.01)
    unstable = _synthetic_ticket(client, tr.experiment_id, "u", 20, 0.05)
    shown = {r.run_id for r in best_tickets(uri, sweep="stable", top=None)}
    assert stable in shown and unstable not in shown  # over the sweep's bound: not a best ticket
    assert all(r.instability is not None and r.instability <= 0.02
               for r in best_tickets(uri, sweep="stable", top=None))
    assert unstable in {r.run_id for r in best_tickets(uri, top=None)}  # across sweeps: no bound

    png = plot_instability("stable", uri, tmp_path / "inst.png")
    assert png is not None and png.stat().st_size > 10_000
    parent = client.search_runs([tr.experiment_id], f"tags.{S.KIND} = '{S.SWEEP}'")[0]
    assert "plots/instability.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]


def test_max_instability_needs_the_trials_to_measure_it(tmp_path: Path) -> None:
    doc = {"name": "s", "base": {"train.epochs": 2}, "space": {"prune.rate": [0.2, 0.5]},
           "objective": {"target_density": 0.5, "max_instability": 0.02}}
    with pytest.raises(ConfigError, match=r"\[objective\] max_instability: needs \[base\] prune.instability"):
        sweep_from_dict(doc, cwd=tmp_path)
    doc["base"]["prune.instability"] = True
    with pytest.raises(ConfigError, match=r"\[objective\] max_instability: -1"):
        sweep_from_dict(doc, ["objective.max_instability=-1"], cwd=tmp_path)
    sweep = sweep_from_dict(doc, cwd=tmp_path)
    assert sweep.max_instability == 0.02

    # The searcher hands Optuna's samplers each trial's last instability as a constraint (feasible <= 0); a level
    # reports it with its last evaluation (level_done), the only results Optuna hears.
    search = searcher(sweep)
    for trial_id, instability in (("stable", 0.01), ("unstable", 0.05), ("unmeasured", None)):
        search.suggest(trial_id)
        row = {"val_score": 0.9, "training_iteration": 1, "epochs_total": 1.0}
        if instability is not None:
            search.on_trial_result(trial_id, {**row, "instability_val": instability, "level_done": True})
        search.on_trial_complete(trial_id, {**row, "final": True})
    study = optuna.load_study(study_name="s", storage=optuna_storage(sweep.optuna_storage))
    got = [t.constraints["instability"] for t in study.get_trials()]
    assert got == pytest.approx([-0.01, 0.03, 1.0])
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
