"""The training loop: members of a trial trained in lockstep over the same batches, masks kept exact.

A *member* is one model trained inside a trial (the ticket, a control, a replicate seed). All members
of a level start at the same iteration and see the same batch at every iteration, so the loop can
later train them in one batched pass. Pruned weights stay exactly zero: their gradient is masked
before the step and the weight is zeroed after it, so momentum or Adam state can never regrow them.
The learning rate is a pure function of the global iteration, so rewinding to k restores the schedule
position without any scheduler state.

Behaviour at the edges (Early-Bird, reporting, checkpoints) comes in through `Hooks`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.pruning.masks import Mask
from trainables.tasks.registry import Task


class Diverged(RuntimeError):
    """A member's loss became NaN or infinite."""


@dataclass
class Member:
    """One model trained inside a trial, with its own weights, mask and optimizer."""

    name: str  # "ticket" or a control name
    replicate: int
    model: nn.Module
    mask: Mask | None = None
    # filled in by training:
    history: list[dict[str, float]] = field(default_factory=list)
    snapshot: dict[str, torch.Tensor] | None = None  # weights captured at `capture_at`


def lr_at(it: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at global iteration `it` of `total` (warm-up, then the schedule)."""
    lr = cfg.lr
    if cfg.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(it, total) / max(total, 1)))
    elif cfg.lr_schedule == "step":  # x0.1 at 50% and again at 75% of training
        lr *= 0.1 ** ((it >= total // 2) + (it >= (3 * total) // 4))
    if cfg.warmup_iters and it < cfg.warmup_iters:
        lr *= (it + 1) / cfg.warmup_iters
    return lr


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: unknown value '{cfg.optimizer}'")


class _Stepper:
    """One member's optimizer step with exact masking (float masks cached once per level)."""

    def __init__(self, member: Member, cfg: TrainConfig) -> None:
        self.model = member.model
        self.opt = make_optimizer(member.model, cfg)  # fresh optimizer state every level
        params = dict(member.model.named_parameters())
        mask = member.mask or {}
        self.params: list[torch.Tensor] = [params[n] for n in mask]
        self.masks: list[torch.Tensor] = [m.to(device=params[n].device, dtype=params[n].dtype)
                                          for n, m in mask.items()]

    def step(self, task: Task, it: int, lr: float) -> torch.Tensor:
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss = task.step_loss(self.model, it)
        loss.backward()
        if self.params:
            grads = [p.grad for p in self.params if p.grad is not None]
            if len(grads) == len(self.params):
                torch._foreach_mul_(grads, self.masks)  # type: ignore[arg-type]
            self.opt.step()
            with torch.no_grad():
                torch._foreach_mul_(self.params, self.masks)  # type: ignore[arg-type]
        else:
            self.opt.step()
        return loss.detach()


@dataclass
class Hooks:
    """Behaviour at the loop's edges. `epoch_start` returning True stops training there."""

    epoch_start: Callable[[int, list[Member]], bool] | None = None
    epoch_end: Callable[[int, int, list[Member]], None] | None = None  # (epoch, iteration, members)


def train_members(members: list[Member], task: Task, cfg: TrainConfig, *, start: int, stop: int,
                  capture_at: int | None = None, hooks: Hooks | None = None) -> int:
    """Train every member from global iteration `start` to `stop` in lockstep; return the last iteration.

    Each member's `history` gets one row per evaluation (end of each epoch): iteration, epoch, val
    loss/acc/score. With `capture_at` each member's weights after that many iterations are stored in
    `member.snapshot` (the rewind point). Members that can share one batched pass are trained by
    `population.try_population` (steered by the environment variable TICKET_SEARCH_POPULATION).
    """
    from trainables.training.population import try_population  # late import: population builds on this module

    end = try_population(members, task, cfg, start=start, stop=stop, capture_at=capture_at, hooks=hooks)
    if end is not None:
        return end
    hooks = hooks or Hooks()
    ipe = task.iters_per_epoch()
    total = cfg.epochs * ipe
    steppers = [_Stepper(m, cfg) for m in members]
    for m in members:
        m.model.train()
        if m.mask is not None:
            _zero_pruned(m.model, m.mask)
    it = start
    while it < stop:
        if it == capture_at:
            _capture(members)
        if it % ipe == 0 and hooks.epoch_start and hooks.epoch_start(it // ipe, members):
            break
        lr = lr_at(it, total, cfg)
        for s in steppers:
            s.step(task, it, lr)
        it += 1
        if it % ipe == 0 or it == stop:
            _evaluate(members, task, it, ipe)
            if hooks.epoch_end:
                hooks.epoch_end(math.ceil(it / ipe), it, members)
    if it == capture_at:
        _capture(members)
    return it


def _zero_pruned(model: nn.Module, mask: Mask) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in mask.items():
            params[name].mul_(m.to(params[name].dtype))


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
