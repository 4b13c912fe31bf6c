"""Instability analysis: the twin's own data order, one batched pass, the error barrier and where it goes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainables import seeds
from trainables.config import ConfigError, Ticket
from trainables.io.results import instability_metrics
from trainables.lottery import Lottery
from trainables.training import instability
from trainables.training.loop import train_members
from trainables.training.members import TICKET, TWIN
from trainables.training.population import Population
from trainables.training.steppers import OneByOne
from trainables.trial import level_metrics

SMALL = {"model.name": "mlp", "model.widths": "32,16", "train.epochs": 1, "train.batch_size": 64,
         "train.device": "cpu", "prune.instability": True, "prune.levels": 1, "prune.rate": 0.5}


def ticket(**kw: object) -> Ticket:
    return Ticket.from_flat({**SMALL, **kw})


def test_barrier_height_is_the_peak_over_the_mean_of_the_ends() -> None:
    assert instability.height([0.1, 0.3, 0.2]) == pytest.approx(0.3 - 0.15)
    assert instability.height([0.1, 0.1, 0.1]) == 0.0
    assert instability.height([0.4, 0.2, 0.0]) == pytest.approx(0.2)  # a monotone path: the higher end


def test_the_twin_reads_the_same_examples_in_another_order() -> None:
    lot = Lottery(ticket())
    twin = lot._twin_task(0)
    ipe = lot.task.iters_per_epoch()
    assert not torch.equal(twin.batch(0)[1], lot.task.batch(0)[1])

    def epoch(task: object) -> torch.Tensor:
        return torch.sort(torch.cat([task.batch(i)[0].flatten(1) for i in range(ipe)]), dim=0).values  # type: ignore[attr-defined]

    assert torch.equal(epoch(twin), epoch(lot.task))  # one epoch = every training example once, in both
    assert twin.seed == seeds.twin_order(lot.ticket.train.seed, 0) != lot._twin_task(1).seed


def test_a_twin_trains_batched_exactly_as_one_by_one() -> None:
    """Per-member batches under vmap (the twin's own order) give the one-by-one trajectory."""
    lot = Lottery(ticket(**{"prune.replicates": 2}))
    lot._start()
    runs = {}
    for name, stepper in (("solo", OneByOne), ("batched", Population)):
        members = lot.members(0)
        assert [m.name for m in members] == [TICKET, TICKET, TWIN, TWIN]
        step = OneByOne(members, lot.task, lot.ticket.train) if stepper is OneByOne else \
            Population(members, lot.task, lot.ticket.train)
        train_members(members, lot.task, lot.ticket.train, start=0, stop=lot.ipe, stepper=step)
        runs[name] = [torch.cat([p.detach().flatten() for p in m.model.parameters()]) for m in members]
    for solo, batched in zip(runs["solo"], runs["batched"], strict=True):
        assert torch.allclose(solo, batched, atol=1e-5)
    ticket0, twin0 = runs["solo"][0], runs["solo"][2]
    assert (ticket0 - twin0).abs().max() > 1e-3  # another data order: another trajectory


def test_a_copy_has_no_barrier_and_a_permuted_copy_has_one() -> None:
    """The same weights at both ends: every point is that network (barrier exactly 0). A hidden-unit
    permutation of a trained network computes the same function (equal ends), but halfway the units are
    averaged with strangers: a clear barrier, the failure the analysis is there to find."""
    lot = Lottery(ticket(**{"model.widths": "64", "train.epochs": 2, "prune.instability": False}))
    lot._start()
    member = lot.members(0)[0]
    train_members([member], lot.task, lot.ticket.train, start=0, stop=lot.total)
    a = member.model
    same = instability.error_barrier(lot.task, a, copy.deepcopy(a), alphas=5)
    assert same.val == 0.0 and same.test == 0.0 and len(same.val_error) == 5
    b = copy.deepcopy(a)
    linears = [m for m in b.modules() if isinstance(m, nn.Linear)]
    perm = torch.randperm(linears[0].out_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        linears[0].weight.copy_(linears[0].weight[perm])
        linears[0].bias.copy_(linears[0].bias[perm])
        linears[1].weight.copy_(linears[1].weight[:, perm])
    permuted = instability.error_barrier(lot.task, a, b, alphas=5)
    assert permuted.val_error[0] == pytest.approx(permuted.val_error[-1])  # one function at both ends
    assert permuted.val > 0.05 and permuted.test > 0.05


def test_batchnorm_statistics_are_recomputed_at_each_point() -> None:
    lot = Lottery(ticket(**{"prune.instability": False}))
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), norm, nn.ReLU(), nn.Linear(16, 10))
    norm.running_mean.fill_(5.0)  # stale statistics, as an interpolated point would have
    instability.recompute_bn(model, lot.task, batches=3)
    with torch.no_grad():
        means = [model[1](model[0](lot.task.batch(i)[0])).mean(0) for i in range(3)]
    # a cumulative average of the three batches' means (momentum None), not an exponential one
    assert torch.allclose(norm.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert norm.momentum == 0.1  # restored


def test_a_level_records_instability_apart_from_its_controls() -> None:
    lot = Lottery(ticket(**{"prune.controls": "shuffle", "prune.replicates": 2, "prune.instability_alphas": 5}))
    results = list(lot.run())
    for r in results:  # rewind 0: level 0 trains from the rewind point too
        assert set(r.controls) == ({"shuffle"} if r.level else set())
        assert all(m.member != TWIN for m in r.members)
        inst = r.instability
        assert len(inst["val_per_replicate"]) == 2 and len(inst["alpha"]) == 5
        assert inst["val"] == pytest.approx(sum(inst["val_per_replicate"]) / 2)
        assert inst["val"] >= -1e-9  # the peak is at least the mean of the ends
        metrics = level_metrics(r, lot.state)
        assert metrics["instability_val"] == inst["val"] and metrics["instability_test"] == inst["test"]
    assert instability_metrics(list(Lottery(ticket(**{"prune.instability": False})).run())[-1]) == {}


def test_a_later_rewind_point_measures_from_level_one() -> None:
    results = list(Lottery(ticket(**{"prune.rewind_iter": 5})).run())
    assert results[0].instability == {}  # level 0 makes the rewind point: no twin
    assert set(results[1].instability) >= {"val", "test"}


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="prune.instability_alphas"):
        ticket(**{"prune.instability_alphas": 2})
    with pytest.raises(ConfigError, match="prune.instability: the gym:CartPole-v1 task"):
        Lottery(ticket(**{"data.name": "gym:CartPole-v1", "model.name": "mlp"}))


def _level_one(replicates: int = 1, **kw: object) -> list[float]:
    """Validation instability of the level-1 tickets (30% of the weights) on digits, one per replicate."""
    lot = Lottery(Ticket.from_flat({"train.epochs": 4, "prune.levels": 1, "prune.rate": 0.7, "train.device": "cpu",
                                    "prune.instability": True, "prune.replicates": replicates, **kw}))
    return list(lot.run())[-1].instability["val_per_replicate"]


@pytest.mark.slow
@pytest.mark.science
@pytest.mark.usefixtures("one_thread")
def test_instability_is_near_zero_for_lenet_and_falls_with_a_later_rewind_point_at_a_high_rate() -> None:
    """lenet300 on digits (validation split: one example is 0.56 points), IMP at rate 0.7 to 30% of the
    weights, 4 epochs per level; the level-1 ticket's instability in points:

    - the instability paper's LeNet on MNIST, stable at rewind 0: SGD lr 0.05, batch 64, replicates 0-2 of
      train.seed 0: 0.0, 0.3, 0.3 (train.seed 1: 1.0, 0.7, 0.7; train.seeds 0-2 one replicate each: 0.0,
      1.0, 0.0). Asserted: under the paper's threshold of stable, 2 points;
    - calibrated here to be unstable at rewind 0: SGD lr 0.2, batch 16, train.seeds 0-2, rewind 0 against
      rewind 80 (under one epoch):
        ATEN_CPU_CAPABILITY=avx2     rewind 0: 20.1 34.4 16.0 (mean 23.5)  rewind 80: 3.8 1.7 0.7 (mean 2.1)
        ATEN_CPU_CAPABILITY=default  rewind 0: 40.3 18.1 24.3 (mean 27.5)  rewind 80: 12.2 8.0 1.4 (mean 7.2)
      (lr 0.3 diverges for some seeds under the default kernels; lr 0.12 is stable at both rewind points.)
      Asserted: every seed above 10 points at rewind 0 and lower at rewind 80 (per seed at least 10 points
      lower, measured), and the means at least 10 points apart (measured 20 and 21).
    """
    stable = _level_one(replicates=3)
    assert max(stable) <= 0.02, stable
    fast = {"train.lr": 0.2, "train.batch_size": 16}
    early = [_level_one(**fast, **{"train.seed": s})[0] for s in range(3)]
    later = [_level_one(**fast, **{"train.seed": s, "prune.rewind_iter": 80})[0] for s in range(3)]
    assert min(early) > 0.10 and all(e > lt for e, lt in zip(early, later, strict=True)), (early, later)
    assert sum(early) / 3 - sum(later) / 3 > 0.10, (early, later)
