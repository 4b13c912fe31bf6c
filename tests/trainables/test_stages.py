"""Stage reuse: a trial whose levels come from the stage store (the dense level, or level L by its prefix) finds
exactly the ticket it would have found training them, trains fewer epochs, and says so; what may not be reused
is not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.config import Ticket
from trainables.io import checkpoint, stages
from trainables.io.results import LevelResult
from trainables.io.stagestore import StageStore
from trainables.lottery import Lottery
from trainables.staged import StagedLottery

SMALL = {"model.name": "mlp", "model.widths": "32,16", "train.epochs": 2, "train.batch_size": 64,
         "train.device": "cpu", "prune.levels": 2}


def ticket(**kw: Any) -> Ticket:
    return Ticket.from_flat({**SMALL, **kw})


def run(lot: Lottery) -> tuple[list[LevelResult], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    lot.on_epoch = rows.append
    return list(lot.run()), rows


def assert_same(a: list[LevelResult], b: list[LevelResult]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for m, n in zip(x.masks, y.masks, strict=True):
            assert m.keys() == n.keys() and all(torch.equal(m[k], n[k]) for k in m), f"level {x.level} masks"
        assert x.weights.keys() == y.weights.keys()
        assert all(torch.equal(x.weights[k], y.weights[k]) for k in x.weights), f"level {x.level} weights"
        jx, jy = x.to_json(), y.to_json()
        for j in (jx, jy):
            j.pop("wall_s"), j.pop("reused_stage")
        assert json.dumps(jx, sort_keys=True) == json.dumps(jy, sort_keys=True), f"level {x.level}"  # NaN too


SLOW = pytest.mark.slow


@pytest.mark.parametrize("extra", [
    pytest.param({}, id="k0", marks=SLOW),
    pytest.param({"prune.rewind_iter": 7}, id="through"),
    pytest.param({"prune.rewind_iter": 7, "prune.rewind_order": "restart"}, id="restart", marks=SLOW),
    pytest.param({"prune.replicates": 2, "prune.scorer": "snip", "prune.controls": "reinit"}, id="replicates-snip",
                 marks=SLOW),
    pytest.param({"prune.instability": True, "prune.instability_alphas": 3}, id="instability",  # twins at level 0
                 marks=SLOW),
])
def test_a_reused_dense_level_gives_the_ticket_training_it_gives(tmp_path: Path, extra: dict[str, Any]) -> None:
    store = StageStore(tmp_path)
    first = StagedLottery(ticket(**{"prune.rate": 0.5, **extra}), store=store)
    run(first)
    assert not first.state.reused_stage and first.state.epochs_trained == first.state.epochs_total

    other = ticket(**{"prune.rate": 0.3, **extra})  # another pruning key: the same dense level
    reused = StagedLottery(other, store=store)
    got, rows = run(reused)
    plain = Lottery(other)
    want, want_rows = run(plain)
    assert_same(got, want)
    assert reused.state.reused_stage and reused.state.epochs_total == plain.state.epochs_total
    assert got[0].reused_stage and not want[0].reused_stage and not got[1].reused_stage
    assert reused.state.epochs_trained == pytest.approx(plain.state.epochs_total - other.train.epochs)  # no level 0
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in want_rows]  # level 0's curve replayed
    assert rows[0]["epochs_trained"] == 0 and want_rows[0]["epochs_trained"] == want_rows[0]["epochs_total"]


@pytest.mark.parametrize("extra", [
    pytest.param({"prune.rewind_iter": 7}, id="through"),
    pytest.param({"prune.replicates": 2, "prune.scorer": "snip", "prune.controls": "reinit,invert"},
                 id="replicates-snip-controls", marks=SLOW),
    pytest.param({"prune.instability": True, "prune.instability_alphas": 3, "prune.rewind_iter": 7},
                 id="instability", marks=SLOW),  # twins at every pruned level
])
def test_a_deeper_search_loads_the_levels_it_shares(tmp_path: Path, extra: dict[str, Any]) -> None:
    """Level L is filed under its prefix: a search going deeper (more levels, a lower target) loads every level
    the shallower one trained and finds the same ticket training all of them finds."""
    store = StageStore(tmp_path)
    run(StagedLottery(ticket(**{"prune.levels": 1, "prune.rate": 0.5, **extra}), store=store))
    deeper = ticket(**{"prune.levels": 3, "prune.rate": 0.5, **extra})
    reused = StagedLottery(deeper, store=store)
    got, rows = run(reused)
    plain = Lottery(deeper)
    want, want_rows = run(plain)
    assert_same(got, want)
    assert [r.reused_stage for r in got] == [True, True, False, False]
    assert reused.state.epochs_total == plain.state.epochs_total
    assert reused.state.epochs_trained == pytest.approx(got[2].epochs + got[3].epochs)  # levels 2 and 3 only
    assert [(r["level"], r["val_acc"]) for r in rows] == [(r["level"], r["val_acc"]) for r in want_rows]

    # a target 3 levels reach at rate 0.5: every level stored, nothing trained
    again = StagedLottery(ticket(**{"prune.levels": 3, "prune.target_density": 0.2, "prune.rate": 0.5, **extra}),
                          store=store)
    assert_same(run(again)[0], want)
    assert again.state.epochs_trained == 0 and again.state.epochs_total == plain.state.epochs_total


def test_a_missing_snapshot_trains_the_prefix_alone(tmp_path: Path) -> None:
    store = StageStore(tmp_path)
    run(StagedLottery(ticket(**{"prune.rewind_iter": 7}), store=store))
    other = ticket(**{"prune.rewind_iter": 20})  # stored dense level, no snapshot at 20
    reused = StagedLottery(other, store=store)
    got, _ = run(reused)
    want, _ = run(Lottery(other))
    assert_same(got, want)
    later = 2 * (other.train.epochs - 20 / reused.ipe)  # levels 1 and 2 train from iteration 20
    assert reused.state.epochs_trained == pytest.approx(later + 20 / reused.ipe)  # + the prefix 0..20


def test_keys_follow_what_changes_level_zero() -> None:
    cpu = torch.device("cpu")
    key = stages.dense_key(ticket(), cpu)
    for same in ({"prune.rate": 0.7}, {"prune.scorer": "snip"}, {"prune.rewind_iter": 5},
                 {"prune.controls": "reinit"}, {"data.root": "elsewhere"}, {"prune.target_density": 0.1}):
        assert stages.dense_key(ticket(**same), cpu) == key, same
    for other in ({"train.lr": 0.01}, {"train.seed": 1}, {"train.epochs": 3}, {"prune.replicates": 2},
                  {"prune.bias": True}, {"model.widths": "32,8"}, {"data.val_fraction": 0.2},
                  {"prune.rewind_iter": 5, "prune.rewind_order": "restart"}, {"prune.instability": True},
                  {"prune.early_bird": True}):
        assert stages.dense_key(ticket(**other), cpu) != key, other
    eb = stages.dense_key(ticket(**{"prune.early_bird": True}), cpu)
    assert stages.dense_key(ticket(**{"prune.early_bird": True, "prune.rate": 0.5}), cpu) != eb
    assert stages.dense_key(ticket(**{"prune.method": "init", "prune.target_density": 0.1}), cpu) is None


def test_a_loaded_level_brings_the_masks_its_weights_trained_under(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Another machine's kernels can break a scoring tie the other way: the level loaded is the producer's whole,
    its masks too, so the weights and the mask the next level prunes from belong together."""
    store = StageStore(tmp_path)
    first = StagedLottery(ticket(**{"prune.levels": 1, "prune.rate": 0.5}), store=store)
    want = run(first)[0][1].masks[0]
    import trainables.lottery as lottery

    real = lottery.level_mask

    def other_tie(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # one kept weight swapped for a pruned one
        mask = {n: m.clone() for n, m in real(*args, **kwargs).items()}
        flat = mask["fc1.weight"].view(-1)
        kept, pruned = int(flat.nonzero()[0]), int((~flat.bool()).nonzero()[0])
        flat[kept], flat[pruned] = flat[pruned].clone(), flat[kept].clone()
        return mask

    monkeypatch.setattr(lottery, "level_mask", other_tie)
    lot = StagedLottery(ticket(**{"prune.levels": 1, "prune.rate": 0.5}), store=store)
    got = run(lot)[0]
    assert got[1].reused_stage
    assert all(torch.equal(lot.state.masks[0][n], want[n]) for n in want)  # not the one this machine drew


def test_a_level_is_keyed_by_its_prefix_not_by_where_the_search_stops() -> None:
    cpu = torch.device("cpu")
    t = ticket(**{"prune.rate": 0.4})
    dense = stages.dense_key(t, cpu)
    assert dense is not None
    key = stages.level_key(dense, t, 2)
    for same in ({"prune.levels": 5}, {"prune.target_density": 0.05}, {"data.root": "elsewhere"}):
        t2 = t.replace(**same)
        assert stages.dense_key(t2, cpu) == dense and stages.level_key(dense, t2, 2) == key, same
    for other in ({"prune.rate": 0.5}, {"prune.scorer": "snip"}, {"prune.rewind_iter": 5}, {"prune.controls": "reinit"},
                  {"prune.output_rate": 0.25}, {"prune.scope": "layer"}, {"prune.structure": "channel"}):
        assert stages.level_key(dense, t.replace(**other), 2) != key, other
    assert stages.level_key(dense, t, 1) != key
    assert stages.level_key(stages.dense_key(t.replace(**{"train.lr": 0.01}), cpu) or "", t, 2) != key


def test_a_checkpoint_keeps_the_books_of_a_reused_level(tmp_path: Path) -> None:
    store = StageStore(tmp_path / "stages")
    run(StagedLottery(ticket(), store=store))
    lot = StagedLottery(ticket(**{"prune.rate": 0.4}), store=store)
    next(iter(lot.run()))  # level 0, loaded
    checkpoint.save(lot.state, tmp_path / "ckpt")
    back = checkpoint.load(tmp_path / "ckpt")
    assert back.reused_stage and back.epochs_trained == 0 and back.epochs_total == lot.state.epochs_total > 0
    assert back.results[0].reused_stage


@SLOW
def test_an_early_bird_level_is_reused_under_its_own_keys_only(tmp_path: Path) -> None:
    """Early-Bird ends level 0 where its keys say: the stage is keyed by them, its observation comes back."""
    t = ticket(**{"prune.early_bird": True, "prune.eb_window": 2, "prune.eb_epsilon": 0.5, "train.epochs": 3,
                  "prune.rate": 0.3})
    store = StageStore(tmp_path)
    run(StagedLottery(t, store=store))
    again = StagedLottery(t, store=store)
    got, _ = run(again)
    plain = Lottery(t)
    want, _ = run(plain)
    assert again.state.reused_stage and plain.state.early_bird_epoch is not None
    assert again.state.early_bird_epoch == plain.state.early_bird_epoch and got[0].epochs < t.train.epochs
    assert_same(got, want)
    other = StagedLottery(t.replace(**{"prune.rate": 0.5}), store=store)
    next(iter(other.run()))
    assert not other.state.reused_stage  # another rate draws other Early-Bird masks: trained anew
