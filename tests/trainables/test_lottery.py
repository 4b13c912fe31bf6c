"""The lottery loop's contract: densities, exact zeros, rewinding, resume, controls, Early-Bird, transfer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainables.config import ConfigError, Ticket
from trainables.io import checkpoint, maskio
from trainables.lottery import Lottery
from trainables.pruning import masks as mk
from trainables.training.loop import train_members
from trainables.training.members import Member

build_members = Lottery.members  # the members of a level, as the lottery assembles them

SMALL = {"model.name": "mlp", "model.widths": "32,16", "train.epochs": 2, "train.batch_size": 64,
         "train.device": "cpu"}


def ticket(**kw: object) -> Ticket:
    return Ticket.from_flat({**SMALL, **kw})


def test_density_after_l_levels_is_exact_per_layer() -> None:
    p, levels = 0.3, 4
    lot = Lottery(ticket(**{"prune.rate": p, "prune.levels": levels, "prune.scope": "layer",
                            "train.epochs": 1}))
    results = list(lot.run())
    assert [r.level for r in results] == list(range(levels + 1))
    model = lot.new_model(0)
    out = mk.output_param(model)
    for r in results:
        for name, m in r.mask.items():
            rate = p * 0.5 if name == out else p  # the output layer prunes at half the rate
            expected = m.numel() * (1 - rate) ** r.level
            assert abs(int(m.sum()) - expected) <= 1, (r.level, name)


def test_global_scope_hits_the_pool_density_and_stops_at_target() -> None:
    lot = Lottery(ticket(**{"prune.rate": 0.5, "prune.levels": 10, "prune.target_density": 0.2,
                            "train.epochs": 1}))
    results = list(lot.run())
    assert results[-1].level == 3  # 0.5^2 = 0.25 > 0.2 >= 0.5^3: IMP stops at the first level at or below
    out = mk.output_param(lot.new_model(0))
    pool = {n: m for n, m in results[-1].mask.items() if n != out}
    total = sum(m.numel() for m in pool.values())
    assert abs(sum(int(m.sum()) for m in pool.values()) - round(total * 0.125)) <= 1


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero(optimizer: str) -> None:
    t = ticket(**{"train.optimizer": optimizer, "train.lr": 0.01, "train.momentum": 0.9,
                  "train.weight_decay": 0.01})
    lot = Lottery(t)
    model = lot.new_model(0)
    gen = torch.Generator().manual_seed(0)
    magnitude = {n: p.detach().abs() for n, p in mk.prunable(model).items()}
    mask = mk.random_like(mk.prune(magnitude, mk.ones(model), 0.3, scope="layer"), gen)
    member = Member("ticket", 0, model, mask)
    for param in mk.prunable(model).values():  # dirty the pruned weights first: training must zero them
        param.data += 1.0
    train_members([member], lot.task, t.train, start=0, stop=lot.total)
    for name, param in mk.prunable(model).items():
        assert torch.count_nonzero(param.detach()[~mask[name]]) == 0, name
        assert torch.count_nonzero(param.detach()[mask[name]]) > 0.99 * int(mask[name].sum())


def test_rewinding_restores_the_weights_saved_at_iteration_k() -> None:
    k = 7
    t = ticket(**{"prune.rewind_iter": k, "prune.levels": 1})
    lot = Lottery(t)
    runner = lot.run()
    next(runner)  # level 0 done: the rewind point is saved
    saved = lot.state.rewind[0]
    # Train a fresh copy of the same initialisation for exactly k iterations: identical weights.
    fresh = Member("ticket", 0, lot.new_model(lot.init_seed(0)), mk.ones(lot.new_model(0)))
    train_members([fresh], lot.task, t.train, start=0, stop=k)
    for name, value in fresh.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    # The level-1 ticket starts from exactly those weights, masked, at iteration k.
    members = build_members(lot, 1)
    mask = lot.state.masks[0]
    for name, value in members[0].model.state_dict().items():
        expected = saved[name] * mask[name] if name in mask else saved[name]
        start = value * mask[name] if name in mask else value
        assert torch.equal(start, expected), name
    assert lot.state.start_iter == k
    level1 = next(runner)
    assert level1.iterations == lot.total - k


def test_stop_and_resume_gives_identical_results(tmp_path: Path) -> None:
    t = ticket(**{"prune.levels": 3, "prune.controls": "shuffle,reinit", "prune.rewind_iter": 5})
    straight = list(Lottery(t).run())
    first = Lottery(t)
    runner = first.run()
    next(runner)
    next(runner)
    checkpoint.save(first.state, tmp_path / "ckpt")
    del first, runner
    resumed = Lottery(t, state=checkpoint.load(tmp_path / "ckpt"))
    rest = list(resumed.run())
    assert [r.level for r in rest] == [2, 3]
    for a, b in zip(straight[2:], rest, strict=True):
        assert a.val_acc == b.val_acc and a.test_acc == b.test_acc and a.controls == b.controls
        assert all(torch.equal(a.mask[n], b.mask[n]) for n in a.mask)
    assert [r.level for r in resumed.state.results] == [0, 1, 2, 3]


def test_controls_keep_counts_and_report_the_ticket_margin() -> None:
    t = ticket(**{"prune.levels": 1, "prune.controls": "reinit,shuffle,random", "prune.replicates": 2})
    lot = Lottery(t)
    results = list(lot.run())
    lv = results[1]
    assert set(lv.controls) == {"reinit", "shuffle", "random"}
    assert len(lv.members) == 2 * 4 and len(lv.masks) == 2
    for c, v in lv.controls.items():
        assert lv.advantage[c] == pytest.approx(lv.val_acc - v["val_acc"])
        assert v["density"] == pytest.approx(lv.density, abs=1e-3)
    assert lv.val_acc_std >= 0 and not math.isnan(lv.val_acc_std)
    lot.state.level = 1
    lot.state.masks = lv.masks
    built = build_members(lot, 1)
    shuffle = next(m for m in built if m.name == "shuffle" and m.replicate == 0)
    for name, m in lv.masks[0].items():
        assert int(shuffle.mask[name].sum()) == int(m.sum())  # same per-layer counts
    assert any(not torch.equal(shuffle.mask[n], lv.masks[0][n]) for n in lv.masks[0])


@pytest.mark.science
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", range(5))
def test_early_bird_stops_dense_training_and_survives_resume(tmp_path: Path, seed: int) -> None:
    """The Early-Bird ticket is drawn once the masks settle: not on the first, noisy epochs (a window of 3
    could fire at epoch 2 at the earliest) and well before the end of the 12 epochs.

    Measured Early-Bird epoch for train.seed 0-9 (MLP 32-16 on digits, epsilon 0.05, window 3), the same
    under ATEN_CPU_CAPABILITY=default and avx2 with 1 and 2 threads: 6 8 6 6 5 6 5 6 5 6. Asserted for
    seeds 0-4: between 3 and 10, two epochs of margin on either side of the range seen (5-8)."""
    t = ticket(**{"train.epochs": 12, "prune.early_bird": True, "prune.eb_epsilon": 0.05,
                  "prune.eb_window": 3, "prune.levels": 1, "train.lr": 0.02, "train.seed": seed})
    lot = Lottery(t)
    runner = lot.run()
    level0 = next(runner)
    eb = lot.state.early_bird_epoch
    assert eb is not None and 3 <= eb <= 10, eb
    assert level0.iterations == eb * lot.ipe  # dense training stopped when the ticket was drawn
    checkpoint.save(lot.state, tmp_path)
    assert checkpoint.load(tmp_path).early_bird_epoch == eb


def test_prune_at_init_reaches_the_target_in_one_level() -> None:
    t = ticket(**{"prune.method": "init", "prune.scorer": "synflow", "prune.target_density": 0.1,
                  "prune.iterations": 20, "prune.controls": "random"})
    results = list(Lottery(t).run())
    assert [r.level for r in results] == [1]
    assert results[0].density == pytest.approx(0.1, abs=0.02)
    assert "random" in results[0].controls


def test_ticket_transfer_refits_a_changed_output_layer(tmp_path: Path) -> None:
    source = list(Lottery(ticket(**{"prune.levels": 2, "train.epochs": 1})).run())[-1]
    path = tmp_path / "ticket.safetensors"
    maskio.save(source.mask, path)
    target = ticket(**{"data.name": "synthetic", "data.input_shape": "1x8x8", "data.num_classes": 4,
                       "train.optimizer": "adam", "train.lr": 0.003, "prune.init_mask": str(path),
                       "prune.levels": 1, "train.epochs": 1})
    lot = Lottery(target)
    first = next(lot.run())
    out = mk.output_param(lot.new_model(0))
    for name, m in first.mask.items():
        if name == out:
            assert m.shape[0] == 4
            assert mk.density({name: m}) == pytest.approx(mk.density({name: source.mask[name]}), abs=0.05)
        else:
            assert torch.equal(m, source.mask[name])  # transferred as is


def test_rewind_beyond_training_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prune.rewind_iter: 100000 is not below"):
        Lottery(ticket(**{"prune.rewind_iter": 100_000}))
