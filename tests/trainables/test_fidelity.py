"""Fidelity to the reference implementations (issue 12): rewinding restarts at k with the LR position, the
data order and a fresh optimizer; open_lth's order; reinit's weights; the output layer pooled or at its own
rate; init's target over all weights; scoring examples and mode; warm-up; Early-Bird over every replicate
and its channel variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, Ticket
from trainables.lottery import Lottery
from trainables.pruning import masks as mk
from trainables.pruning import schedule, scorers
from trainables.pruning.earlybird import EarlyBirdSearch, bn_scales, channel_mask
from trainables.training import population
from trainables.training.loop import train_members
from trainables.training.members import Member
from trainables.training.optim import lr_at, make_optimizer
from trainables.training.steppers import OneByOne

SMALL = {"model.name": "mlp", "model.widths": "32,16", "train.epochs": 2, "train.batch_size": 64,
         "train.device": "cpu"}


def ticket(**kw: object) -> Ticket:
    return Ticket.from_flat({**SMALL, **kw})


def manual(lot: Lottery, model: nn.Module, mask: mk.Mask, start: int, stop: int) -> None:
    """Plain masked training from `start` to `stop`: a fresh optimizer, the LR of each global iteration,
    the batch of each global iteration."""
    cfg = lot.ticket.train
    opt = make_optimizer(model, cfg)
    params = dict(model.named_parameters())
    for it in range(start, stop):
        for group in opt.param_groups:
            group["lr"] = lr_at(it, lot.total, cfg)
        opt.zero_grad(set_to_none=True)
        lot.task.step_loss(model, it).backward()
        for n, m in mask.items():
            params[n].grad.mul_(m)
        opt.step()
        with torch.no_grad():
            for n, m in mask.items():
                params[n].mul_(m)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.allclose(v, sb[k], rtol=0, atol=1e-6) for k, v in a.state_dict().items())


SCHEDULED = {"train.lr_schedule": "step", "train.lr": 0.1, "train.momentum": 0.9, "prune.rewind_iter": 7,
             "prune.levels": 1}


def test_a_level_restarts_at_k_with_its_lr_position_data_order_and_a_fresh_optimizer(monkeypatch) -> None:
    """Level 1 trained by the lottery equals plain training from the rewind point k = 7 (mid-epoch, so the
    data order matters; a step schedule, so the LR position matters; momentum 0.9, so a carried-over
    optimizer would show)."""
    monkeypatch.setenv(population.ENV, "0")
    lot = Lottery(ticket(**SCHEDULED))
    results = list(lot.run())
    trained = lot._trained[0].model
    again = lot.new_model(lot.init_seed(0))
    again.load_state_dict(lot.state.rewind[0])
    mask = results[1].mask
    mk.apply_(again, mask)
    manual(lot, again, mask, 7, lot.total)
    assert same_weights(trained, again)
    shifted = lot.new_model(lot.init_seed(0))  # the same training started at iteration 0 (LR and data)
    shifted.load_state_dict(lot.state.rewind[0])
    mk.apply_(shifted, mask)
    manual(lot, shifted, mask, 0, lot.total - 7)
    assert not same_weights(trained, shifted)


def test_open_lth_order_trains_level_0_from_k_with_a_fresh_optimizer(monkeypatch) -> None:
    monkeypatch.setenv(population.ENV, "0")
    lots = {order: Lottery(ticket(**SCHEDULED, **{"prune.rewind_order": order})) for order in ("restart", "through")}
    for lot in lots.values():
        next(lot.run())
    ref = lots["restart"]
    model = ref.new_model(ref.init_seed(0))
    mask = mk.ones(model)  # level 0 is dense (state.masks already holds level 1's)
    manual(ref, model, mask, 0, 7)
    rewind = {k: v.clone() for k, v in model.state_dict().items()}
    manual(ref, model, mask, 7, ref.total)  # a new optimizer at k: open_lth's level 0
    assert same_weights(ref._trained[0].model, model)
    assert all(torch.equal(v, ref.state.rewind[0][k]) for k, v in rewind.items())
    assert ref.state.start_iter == lots["through"].state.start_iter == 7
    assert all(torch.equal(v, lots["through"].state.rewind[0][k]) for k, v in rewind.items())
    assert not same_weights(lots["through"]._trained[0].model, model)  # momentum carried past k


def test_reinit_starts_from_other_weights_than_the_ticket() -> None:
    lot = Lottery(ticket(**{"prune.levels": 1, "prune.controls": "reinit,shuffle", "train.epochs": 1}))
    runner = lot.run()
    next(runner)
    members = lot.members(1)
    tk, reinit, shuffle = (next(m for m in members if m.name == n) for n in ("ticket", "reinit", "shuffle"))
    assert all(torch.equal(reinit.mask[n], tk.mask[n]) for n in tk.mask)
    fresh, shuffled = mk.prunable(reinit.model), mk.prunable(shuffle.model)
    for name, p in mk.prunable(tk.model).items():  # biases start at zero in every member
        kept = tk.mask[name]
        assert not torch.equal(p[kept], fresh[name][kept]), name  # the kept weights are new draws
        assert torch.equal(p, shuffled[name])  # shuffle keeps the ticket's weights


def test_init_target_density_counts_every_weight_and_the_output_layer_can_pool() -> None:
    flat = {"prune.method": "init", "prune.scorer": "magnitude", "prune.target_density": 0.05, "train.epochs": 1}
    own = Lottery(ticket(**flat))
    own_mask = next(own.run()).mask
    model = own.new_model(own.init_seed(0))
    out = mk.output_param(model)
    out_d = schedule.output_density_for(0.05, 0.2, 0.5)  # 0.244: as IMP at rate 0.2 would leave it
    assert int(own_mask[out].sum()) == round(out_d * own_mask[out].numel())
    assert mk.density(own_mask) == pytest.approx(0.05, abs=1e-4)  # all weights, the output layer included
    pooled = Lottery(ticket(**flat, **{"prune.output_pool": "pooled"}))
    pooled_mask = next(pooled.run()).mask
    scores = {n: p.detach().abs() for n, p in mk.prunable(model).items()}
    expected = mk.prune(scores, mk.ones(model), 0.05, scope="global")  # one pool, output layer included
    assert all(torch.equal(pooled_mask[n], expected[n]) for n in expected)
    assert mk.density({out: pooled_mask[out]}) != pytest.approx(out_d, abs=0.01)
    imp = Lottery(ticket(**{"prune.levels": 1, "prune.output_pool": "pooled", "train.epochs": 1}))
    level1 = list(imp.run())[-1].mask
    assert mk.density(level1) == pytest.approx(0.8, abs=1e-3)  # one pool: every weight at rate 0.2


def test_an_init_target_below_the_output_layer_alone_is_a_config_error() -> None:
    t = ticket(**{"prune.method": "init", "prune.target_density": 0.001, "prune.output_rate": 0.0,
                  "train.epochs": 1})
    with pytest.raises(ConfigError, match="prune.target_density: 0.001 is below what the output layer keeps"):
        next(Lottery(t).run())


def test_scoring_examples_are_drawn_from_each_replicates_seed() -> None:
    lot = Lottery(ticket(**{"prune.scorer": "snip", "prune.replicates": 2, "prune.score_examples": 3}))
    a, b, again = (lot._score_ctx(r).batches[0] for r in (0, 1, 0))
    assert torch.equal(a[0], again[0]) and not torch.equal(a[0], b[0])
    assert torch.bincount(a[1], minlength=10).tolist() == [3] * 10  # three per class
    first = lot.task.score_batches(examples=3)[0]  # without a generator: the first three of each class
    assert not torch.equal(a[0], first[0])
    total = Lottery(ticket(**{"prune.scorer": "grasp", "prune.score_examples": 25, "prune.score_per": "total"}))
    assert len(total._score_ctx(0).batches[0][1]) == 25
    assert lot._score_ctx(0).mode == "eval"


def test_warm_up_is_it_over_w_so_the_first_step_moves_no_weight() -> None:
    lot = Lottery(ticket(**{"train.warmup_iters": 10, "train.lr": 0.1}))
    cfg = lot.ticket.train
    assert [lr_at(it, lot.total, cfg) for it in (0, 5, 10)] == [0.0, 0.05, 0.1]
    model = lot.new_model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_members([Member("ticket", 0, model, mk.ones(model))], lot.task, cfg, start=0, stop=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_early_bird_waits_for_every_replicate() -> None:
    t = ticket(**{"prune.replicates": 2, "prune.early_bird": True, "prune.eb_window": 2, "prune.eb_epsilon": 0.0})
    lot = Lottery(t)
    search = EarlyBirdSearch(t.prune, 0.8, lot.output)
    steady, moving = lot.new_model(0), lot.new_model(1)
    mask = mk.ones(steady)
    assert not search.update([(steady, mask), (moving, mask)])
    with torch.no_grad():
        for p in mk.prunable(moving).values():
            p.copy_(torch.randn_like(p))
    assert not search.update([(steady, mask), (moving, mask)])  # replicate 0 settled, replicate 1 not
    assert search.update([(steady, mask), (moving, mask)])
    restored = EarlyBirdSearch(t.prune, 0.8, lot.output, search.state_dict())
    assert [d.distances for d in restored.detectors] == [d.distances for d in search.detectors]


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5), nn.BatchNorm1d(5),
                         nn.ReLU(), nn.Linear(5, 3))


def test_channel_masks_rank_bn_scaling_factors_and_the_search_penalises_them() -> None:
    model = bn_model()
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-1.0, 0.3, 8))
        model[4].weight.copy_(torch.linspace(0.05, 0.45, 5))
    mask = channel_mask(model, 0.5)  # of 13 channels the round(6.5) = 6 with the largest |gamma|
    assert list(mask) == ["1.weight", "4.weight"] == list(bn_scales(model))
    scales = {n: p.detach().abs() for n, p in bn_scales(model).items()}
    kept = torch.cat([scales[n][m] for n, m in mask.items()])
    dropped = torch.cat([scales[n][~m] for n, m in mask.items()])
    assert len(kept) == round(0.5 * 13) and kept.min() >= dropped.max()
    with pytest.raises(ConfigError, match="prune.eb_structure: channel needs a model with BatchNorm"):
        channel_mask(nn.Linear(3, 2), 0.5)
    # the L1 subgradient: plain SGD at lr 1 on a zero loss moves each scaling factor by -l1 * sign
    x = torch.randn(16, 6)

    class Zero:
        def step_loss(self, model: nn.Module, it: int) -> torch.Tensor:
            return model(x).sum() * 0.0

    penalised = Member("ticket", 0, bn_model(), None, bn_l1=0.01)
    before = {n: p.detach().clone() for n, p in bn_scales(penalised.model).items()}
    cfg = Ticket.from_flat({"train.lr": 1.0, "train.momentum": 0.0}).train

    OneByOne([penalised], Zero(), cfg).step(0, 1.0)  # type: ignore[arg-type]
    for n, p in bn_scales(penalised.model).items():
        assert torch.allclose(p.detach(), before[n] - 0.01 * torch.sign(before[n]))


def test_score_mode_train_and_eval_differ_on_batchnorm() -> None:
    model = bn_model()
    model.train()
    for _ in range(3):
        model(torch.randn(32, 6) * 3 + 1)  # running statistics away from the 0/1 start
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(30, 6, generator=g), torch.randint(3, (30,), generator=g))
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    scores = {mode: scorers.score("snip", model, mk.ones(model), scorers.ScoreContext(
        batches=[batch], loss=loss, input_shape=(6,), generator=g, mode=mode)) for mode in ("eval", "train")}
    assert any(not torch.allclose(scores["eval"][n], scores["train"][n]) for n in scores["eval"])
    assert model.training
