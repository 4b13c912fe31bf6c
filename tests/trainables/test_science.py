"""The lottery ticket effect itself, over ten seeds: on MNIST-1D a ~12% IMP ticket is at least as accurate as
the dense MLP on average and beats a shuffled mask in every replicate.

MNIST-1D (Greydanus 2020) was made for this: dense MLPs overfit its 4000 training sequences, while IMP
tickets keep the useful (local) connections and generalise better; a random mask with the same per-layer
counts (the `shuffle` control) does clearly worse. The claim is about seeds, not one floating-point
trajectory (DESIGN.md section 9): another CPU's kernels (AVX-512 instead of AVX2) or thread count sum in
another order, and after a few hundred steps each replicate follows another trajectory.
"""

from __future__ import annotations

import statistics

import pytest

from trainables.config import Ticket
from trainables.io.results import LevelResult
from trainables.lottery import Lottery

REPLICATES = 10


def per_replicate(result: LevelResult, member: str, key: str = "test_acc") -> list[float]:
    rows = sorted((m for m in result.members if m.member == member), key=lambda m: m.replicate)
    return [getattr(m, key) for m in rows]


def figures(dense: list[float], ticket: list[float], shuffled: list[float], over_dense: list[float],
            over_shuffle: list[float]) -> str:
    def points(xs: list[float]) -> str:
        return " ".join(f"{100 * x:+.1f}" for x in xs) + f"  mean {100 * statistics.fmean(xs):+.1f}"

    means = (100 * statistics.fmean(xs) for xs in (dense, ticket, shuffled))
    return ("MNIST-1D test accuracy: dense {:.1f}%, ticket {:.1f}%, shuffle {:.1f}%\n".format(*means)
            + f"  ticket - dense    {points(over_dense)}\n  ticket - shuffle  {points(over_shuffle)}")


@pytest.mark.slow
@pytest.mark.science
@pytest.mark.usefixtures("one_thread")  # small MLPs train fastest on one thread
def test_imp_ticket_on_mnist1d_beats_dense_and_shuffled_masks() -> None:
    """Replicates 0-9 of train.seed 0 (init seeds 0-9, trained as batched members), MLP 100-100, IMP at
    rate 0.54 per layer for three levels: 11.7% of the weights. Test accuracy, ticket minus its own dense
    network (paired by replicate), and ticket minus its shuffled mask, in points:

    ATEN_CPU_CAPABILITY=avx2 (1 or 2 threads: the same figures): dense 62.5%, ticket 64.6%, shuffle 55.2%;
      ticket - dense  -0.2 +0.3 +4.8 +1.9 +2.4 +4.7 +3.6 +4.7 -0.9 -0.3  mean +2.1
      ticket - shuffle  +7.3 +5.8 +9.9 +9.8 +7.2 +12.0 +9.7 +14.6 +11.2 +5.7  mean +9.3
    ATEN_CPU_CAPABILITY=default (1 or 2 threads): dense 61.2%, ticket 65.1%, shuffle 55.1%;
      ticket - dense  +4.1 +3.3 +2.0 +3.2 +5.3 +7.9 +1.2 +8.1 +2.5 +1.2  mean +3.9
      ticket - shuffle  +8.9 +7.9 +11.0 +8.1 +10.2 +11.6 +6.6 +15.1 +14.6 +6.1  mean +10.0
    MKL_CBWR=COMPATIBLE: dense 62.6%, ticket 65.1%, shuffle 55.2%; ticket - dense mean +2.5 (-0.4 to +9.1),
      ticket - shuffle mean +10.0 (+4.7 to +14.2).
    Validation (the search's advantage): ticket - shuffle mean +8.9 (avx2), +10.4 (default), +10.3 (MKL).

    Over 100 replicate trajectories measured here (train.seeds 0-4, three kernel settings, up to 20
    replicates a run) ticket - dense was +2.5 +- 2.3 points per replicate (-2.3 to +9.1), so a mean over ten
    replicates moves by about 0.7 points from one kernel to another (the 10-replicate means seen: +1.8 to
    +3.9); its margin is 0, more than two such deviations below the worst mean seen. Five replicates could
    not carry the former +2-point claim (+1.9 with AVX-512 kernels, +1.8 with avx2 here). Ticket - shuffle was
    +10.0 +- 2.4 per replicate, never below +4.7 (10-replicate means +9.3 to +10.6): the ticket beats its
    shuffle in every replicate, by more than 6 points on average, and by more than 5 on validation (+8.9
    to +10.4).
    About 45 s on one core (65 s on a busy machine)."""
    t = Ticket.from_flat({
        "data.name": "mnist1d", "model.name": "mlp", "model.widths": "100,100", "train.optimizer": "sgd",
        "train.lr": 0.1, "train.momentum": 0.9, "train.batch_size": 64, "train.epochs": 40, "train.seed": 0,
        "train.device": "cpu", "prune.scope": "layer", "prune.rate": 0.54, "prune.levels": 3,
        "prune.controls": "shuffle", "prune.replicates": REPLICATES})
    results = list(Lottery(t).run())
    dense, ticket = results[0], results[-1]
    assert 0.09 <= ticket.density <= 0.13  # "about 10%": 0.46^3 per hidden layer, output at half the rate
    dense_acc, ticket_acc = per_replicate(dense, "ticket"), per_replicate(ticket, "ticket")
    shuffled = per_replicate(ticket, "shuffle")
    assert len(dense_acc) == len(ticket_acc) == len(shuffled) == REPLICATES

    over_dense = [tk - d for tk, d in zip(ticket_acc, dense_acc, strict=True)]
    over_shuffle = [tk - s for tk, s in zip(ticket_acc, shuffled, strict=True)]
    print(figures(dense_acc, ticket_acc, shuffled, over_dense, over_shuffle))  # make test-kernels shows them
    assert statistics.fmean(over_dense) > 0.0, over_dense  # the ticket matches or beats its dense network
    assert min(over_shuffle) > 0.0, over_shuffle  # the mask, not the density: every replicate
    assert statistics.fmean(over_shuffle) > 0.06, over_shuffle
    assert ticket.advantage["shuffle"] > 0.05  # the same on validation, which the search uses
