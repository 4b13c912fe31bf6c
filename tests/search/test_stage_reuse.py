"""A real sweep over pruning keys trains its dense level once: the other trials load it from the stage store
under the sweep's storage root, report it (`reused_stage`, `epochs_trained` below `epochs_total`) and MLflow's
level-0 ticket runs say so; a second sweep of the same trials on the same root trains nothing, and one going a
level deeper trains only that level; once `ticket-search stages` prunes the store, they train it all again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from search import cli
from search.sweep.file import sweep_from_dict
from search.tracking import schema as S
from search.tune.runner import run_sweep
from trainables.io import stagegc

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def doc(root: Path, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "base": {"data.name": "digits", "model.name": "mlp", "model.widths": "32", "train.epochs": 1,
                 "train.batch_size": 128, "train.device": "cpu", "prune.levels": 1, "prune.rate": 0.5},
        "space": {"prune.rate": {"type": "float", "low": 0.3, "high": 0.7},
                  "prune.scorer": {"type": "categorical", "choices": ["magnitude", "snip"]}},
        "objective": {"name": "accuracy_at_density", "target_density": 0.75},
        "search": {"sampler": "random", "seed": 0},
        "scheduler": {"name": "none"},
        "budget": {"num_samples": 4, "max_concurrent": 2},
        "storage": {"root": str(root / "runs")},
    }


def reused(outcome: Any) -> list[tuple[int, float, float]]:
    """Per trial: (its dense level loaded, epochs it trained, epochs its ticket represents)."""
    out = []
    for r in outcome.results:
        df = r.metrics_dataframe
        dense = df[(df["level"] == 0) & (df["level_done"] == True)]  # noqa: E712 - a pandas mask
        out.append((int(dense["reused_stage"].max()), float(df["epochs_trained"].max()),
                    float(df["epochs_total"].max())))
    return out


def test_a_sweep_over_pruning_keys_trains_its_dense_level_once(tmp_path: Path) -> None:
    # the first two trials start together: whichever takes the lease trains, the other waits and loads
    sweep = sweep_from_dict(doc(tmp_path, "reuse"))
    assert sweep.stages == str(tmp_path / "runs" / "stages")
    got = reused(run_sweep(sweep))
    assert sorted(r for r, _, _ in got) == [0, 1, 1, 1], got
    for flag, trained, total in got:
        assert trained == pytest.approx(total - flag)  # one dense epoch loaded, not trained

    client = MlflowClient(sweep.tracking_uri)
    exp = client.get_experiment_by_name("reuse")
    assert exp is not None
    level0 = client.search_runs([exp.experiment_id], f"tags.{S.KIND} = '{S.TICKET}' and metrics.level = 0")
    assert sorted(r.data.metrics["reused_stage"] for r in level0) == [0, 1, 1, 1]
    assert len({r.data.metrics["val_acc"] for r in level0}) == 1  # one dense network

    again = reused(run_sweep(sweep_from_dict(doc(tmp_path, "again"))))  # a later sweep, the same store
    assert [r for r, _, _ in again] == [1, 1, 1, 1]
    assert [trained for _, trained, _ in again] == [0, 0, 0, 0]  # the same trials: level 1 is stored too

    deeper = sweep_from_dict(doc(tmp_path, "deeper"), ["prune.levels=2"])  # one level further down
    for flag, trained, total in reused(run_sweep(deeper)):
        assert flag == 1 and trained == pytest.approx(total - 2)  # levels 0 and 1 loaded, level 2 trained

    # `ticket-search stages --prune-unused`: everything was used today, so 1 day keeps it all, 0 removes it all,
    # and the same trials then train what the first sweep trained
    entries = len(stagegc.survey(sweep.stages).entries)
    assert entries >= 4 + 1  # the dense level, and at least the first sweep's four level-1 entries
    assert cli.main(["stages", "--root", str(tmp_path / "runs"), "--prune-unused", "1"]) == 0
    assert len(stagegc.survey(sweep.stages).entries) == entries
    assert cli.main(["stages", "--root", str(tmp_path / "runs"), "--prune-unused", "0"]) == 0
    assert stagegc.survey(sweep.stages).entries == []
    assert sorted(reused(run_sweep(sweep_from_dict(doc(tmp_path, "pruned"))))) == sorted(got)

    off = sweep_from_dict(doc(tmp_path, "off"), ["storage.stages=off", "budget.num_samples=2"])
    assert [r for r, _, _ in reused(run_sweep(off))] == [0, 0]  # the store holds their level: off, they train it
