"""Instability analysis (Frankle et al., ICML 2020): is a ticket stable to SGD noise?

Two copies of a ticket train from the same rewind point with the same mask and hyperparameters but another
data order (the lottery's `twin` member). Along the straight path W(a) = a*W1 + (1-a)*W2 between their
trained weights the error is evaluated at `alphas` evenly spaced points, ends included; the instability is
the error barrier: the largest error along the path minus the mean error of the two ends. About 0 means
the two copies found one linearly connected minimum (the paper's "stable": under 2% error), which is
what makes a rewind point good.

Error is `-score` in the task's own units (accuracy as a fraction for classification, so 0.02 is two
points; perplexity for language models; return for RL), on the validation and test splits. Masked
weights are zero in both copies, so every point on the path keeps the mask. A model with BatchNorm gets
its running statistics recomputed at each point (cumulative average over `bn_batches` training batches
in train mode, no gradient): interpolated statistics belong to neither network.

Example:
    >>> barrier = error_barrier(task, ticket_model, twin_model, alphas=11)
    >>> barrier.val, barrier.test, barrier.val_error   # (float, float, 11 errors from W2 to W1)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainables.tasks.base import Task
from trainables.training.members import TICKET, TWIN, Member
from trainables.typed import ConfigError

BN_BATCHES = 20  # training batches that re-estimate BatchNorm statistics at each point of the path


@dataclass
class Barrier:
    """The error along the path and its barrier, per split (`val`, `test`)."""

    val: float
    test: float
    alpha: list[float] = field(default_factory=list)
    val_error: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)


def height(errors: list[float]) -> float:
    """The error barrier: max error along the path minus the mean error of its two ends."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn(model: nn.Module, task: Task, batches: int = BN_BATCHES) -> None:
    """Re-estimate every BatchNorm's running statistics from `batches` training batches (train mode)."""
    norms = _norms(model)
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    for it in range(min(batches, task.iters_per_epoch())):
        x, _ = task.batch(it)
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def error_barrier(task: Task, a: nn.Module, b: nn.Module, alphas: int = 11,
                  bn_batches: int = BN_BATCHES) -> Barrier:
    """The error barrier between the trained weights of `a` (alpha 1) and `b` (alpha 0)."""
    if alphas < 3:
        raise ValueError(f"alphas: need 3 or more points along the path, got {alphas}")
    wa, wb = a.state_dict(), b.state_dict()
    point = copy.deepcopy(a)
    has_bn = bool(_norms(point))
    grid = [i / (alphas - 1) for i in range(alphas)]
    val, test = [], []
    for alpha in grid:
        point.load_state_dict({k: alpha * v + (1 - alpha) * wb[k] if v.is_floating_point() else v
                               for k, v in wa.items()})
        if has_bn:
            recompute_bn(point, task, bn_batches)
        val.append(-task.evaluate(point, "val")["score"])
        test.append(-task.evaluate(point, "test")["score"])
    return Barrier(val=height(val), test=height(test), alpha=grid, val_error=val, test_error=test)


def twin_task(task: Task, data_name: str, seed: int) -> Task:
    """The task a twin trains on: `task` reordered by `seed`; ConfigError for a task with one data order."""
    reordered = getattr(task, "reordered", None)
    if reordered is None:
        raise ConfigError(f"prune.instability: the {data_name} task has no other data order to train a second "
                          "copy with (classification and language models have)")
    twin: Task = reordered(seed)
    return twin


def of_level(task: Task, members: list[Member], alphas: int) -> dict[str, Any]:
    """Each replicate's barrier between its ticket and its twin: means over replicates, each replicate's, and
    replicate 0's path (what results.json and `LevelResult.instability` hold)."""
    tickets = {m.replicate: m for m in members if m.name == TICKET}
    barriers = [error_barrier(task, tickets[t.replicate].model, t.model, alphas) for t in members if t.name == TWIN]
    vals, tests = [b.val for b in barriers], [b.test for b in barriers]
    return {"val": sum(vals) / len(vals), "test": sum(tests) / len(tests), "val_per_replicate": vals,
            "test_per_replicate": tests, "alpha": barriers[0].alpha, "val_error": barriers[0].val_error,
            "test_error": barriers[0].test_error}
