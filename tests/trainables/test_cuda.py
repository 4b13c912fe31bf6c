"""The CUDA path: a ticket search on a GPU does what it does on the CPU (run where a GPU is visible).

CPU and GPU kernels sum in other orders, so the two paths agree to rounding at each step and then drift
apart over training: the checks compare what must be exact (mask arithmetic, pruned weights held at zero,
devices, the batched pass against one-by-one on the same GPU to 1e-4) and the outcome loosely (accuracy
within 5 points of the CPU run after two short levels). CI has no GPU: these are skipped there and run by
the device check (`scripts/device_check.sh`).
"""

from __future__ import annotations

import pytest
import torch

from trainables.config import Ticket
from trainables.lottery import Lottery
from trainables.training import population

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FLAT = {"data.name": "digits", "model.name": "lenet300", "train.epochs": 2, "train.batch_size": 64,
        "train.lr": 0.05, "train.momentum": 0.9, "prune.levels": 2, "prune.rate": 0.5, "prune.rewind_iter": 3,
        "prune.controls": "reinit,shuffle", "prune.replicates": 2}


def levels(device: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> list:  # type: ignore[type-arg]
    monkeypatch.setenv(population.ENV, mode)
    return list(Lottery(Ticket.from_flat({**FLAT, "train.device": device})).run())


def test_a_ticket_search_on_the_gpu_matches_the_cpu_in_densities_and_roughly_in_accuracy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gpu, cpu = levels("cuda", "auto", monkeypatch), levels("cpu", "auto", monkeypatch)
    assert [r.level for r in gpu] == [r.level for r in cpu] == [0, 1, 2]
    for g, c in zip(gpu, cpu, strict=True):
        assert g.density == pytest.approx(c.density, abs=1e-9)  # weight counts are exact arithmetic
        for r in range(2):
            for name, keep in g.masks[r].items():
                assert keep.device.type == "cpu" or keep.is_cuda
                assert int(keep.sum()) == int(c.masks[r][name].sum()), name
        assert g.test_score == pytest.approx(c.test_score, abs=0.05)


def test_batched_members_on_the_gpu_equal_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    solo, batched = levels("cuda", "0", monkeypatch), levels("cuda", "1", monkeypatch)
    for a, b in zip(solo, batched, strict=True):
        assert all(torch.equal(a.masks[r][n].cpu(), b.masks[r][n].cpu()) for r in range(2) for n in a.masks[r])
        assert a.val_score == pytest.approx(b.val_score, abs=1e-4)
        assert a.test_loss == pytest.approx(b.test_loss, abs=1e-4)
        for control, means in a.controls.items():
            assert means["val_score"] == pytest.approx(b.controls[control]["val_score"], abs=1e-4), control
