"""The training loop: a level's members trained in lockstep over the same batches, masks kept exact.

There is one loop. How the members advance by one iteration is its `Stepper` (steppers.py): one by one,
or together in one batched pass (population.py, chosen by `population.batched`, steered by the environment
variable TICKET_SEARCH_POPULATION). The learning rate is a pure function of the global iteration
(optim.py), so rewinding to k restores the schedule position without any scheduler state.

Behaviour at the edges (Early-Bird, reporting, checkpoints) comes in through `Hooks`; each member's
`history` gets one row per evaluation (end of each epoch), and at `capture_at` its `snapshot` (the rewind
point).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainables.config import TrainConfig
from trainables.tasks.base import Task
from trainables.training import population
from trainables.training.members import Diverged, Member
from trainables.training.optim import lr_at
from trainables.training.population import Population
from trainables.training.steppers import OneByOne, Stepper


@dataclass
class Hooks:
    """Behaviour at the loop's edges. `epoch_start` returning True stops training there."""

    epoch_start: Callable[[int, list[Member]], bool] | None = None
    epoch_end: Callable[[int, int, list[Member]], None] | None = None  # (epoch, iteration, members)


def train_members(members: list[Member], task: Task, cfg: TrainConfig, *, start: int, stop: int,
                  capture_at: int | None = None, hooks: Hooks | None = None, stepper: Stepper | None = None) -> int:
    """Train every member from global iteration `start` to `stop` in lockstep; return the last iteration.

    Each member's `history` gets one row per evaluation (end of each epoch): iteration, epoch, val
    loss/acc/score. With `capture_at` each member's weights after that many iterations are stored in
    `member.snapshot` (the rewind point). `stepper` defaults to the batched one where it can and pays
    (`population.batched`), else one by one.
    """
    if stepper is None:
        stepper = population.batched(members, task, cfg, start=start, stop=stop) or OneByOne(members, task, cfg)
    hooks = hooks or Hooks()
    ipe = task.iters_per_epoch()
    total = cfg.epochs * ipe
    it = start
    while it < stop:
        if it == capture_at:
            stepper.sync()
            _capture(members)
        if it % ipe == 0 and hooks.epoch_start:
            stepper.sync()  # hooks read the members' models (Early-Bird scores their weights)
            if hooks.epoch_start(it // ipe, members):
                break
        stepper.step(it, lr_at(it, total, cfg))
        it += 1
        if it % ipe == 0 or it == stop:
            stepper.sync()
            _evaluate(members, task, it, ipe)
            if hooks.epoch_end:
                hooks.epoch_end(math.ceil(it / ipe), it, members)
    stepper.sync()
    if it == capture_at:
        _capture(members)
    return it


def train_population(members: list[Member], task: Task, cfg: TrainConfig, *, start: int, stop: int,
                     capture_at: int | None = None, hooks: Hooks | None = None,
                     autocast: torch.dtype | None = None) -> int:
    """`train_members` with the batched stepper whatever the environment says; raises
    `population.Unsupported` before changing anything when the members cannot share one pass."""
    stepper = Population(members, task, cfg, start=start, autocast=autocast)
    return train_members(members, task, cfg, start=start, stop=stop, capture_at=capture_at, hooks=hooks,
                         stepper=stepper)


def _capture(members: list[Member]) -> None:
    for m in members:
        m.snapshot = {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def _evaluate(members: list[Member], task: Task, it: int, ipe: int) -> None:
    start = time.perf_counter()
    for m in members:
        val = task.evaluate(m.model, "val")
        if not math.isfinite(val["loss"]) and not math.isnan(val["acc"]):
            raise Diverged(f"member {m.name} (replicate {m.replicate}): validation loss is "
                           f"{val['loss']} at iteration {it}")
        m.history.append({"iteration": it, "epoch": it / ipe, "val_loss": val["loss"],
                          "val_acc": val["acc"], "val_score": val["score"],
                          "eval_s": time.perf_counter() - start})
