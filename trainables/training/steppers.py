"""How the loop advances a level's members by one iteration: the `Stepper` protocol, and members one by one.

A stepper owns the optimizers (fresh every level) and keeps masks exact: each pruned weight's gradient is
masked before the optimizer step and the weight zeroed after it, so momentum or Adam state can never
regrow it; the mask is not re-multiplied on the forward pass. A member's `bn_l1` adds bn_l1 * sign(gamma)
to the gradient of every BatchNorm scaling factor (network slimming's subgradient, Early-Bird's search).
`OneByOne` steps each member in turn;
`population.Population` steps them all in one batched pass. `sync` makes the members' own models current
(the batched stepper trains stacked copies) before anything reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from trainables.config import TrainConfig
from trainables.pruning import masks as mk
from trainables.pruning.earlybird import bn_scales
from trainables.tasks.base import Task
from trainables.training.members import Member
from trainables.training.optim import make_optimizer


class Stepper(Protocol):
    def step(self, it: int, lr: float) -> None:
        """One optimizer step of every member at iteration `it` with learning rate `lr`."""

    def sync(self) -> None:
        """Make every member's own model hold its current weights and buffers."""


class OneByOne:
    """Each member's own optimizer step in turn; pruned weights zeroed once when the level starts."""

    def __init__(self, members: list[Member], task: Task, cfg: TrainConfig) -> None:
        self.task = task
        self.steps = [_MemberStep(m, cfg) for m in members]
        for m in members:
            m.model.train()
            if m.mask is not None:
                mk.apply_(m.model, m.mask)

    def step(self, it: int, lr: float) -> None:
        for s in self.steps:
            s.step(self.task, it, lr)

    def sync(self) -> None:
        """Nothing to do: each member trains its own model."""


class _MemberStep:
    """One member's optimizer step with exact masking (float masks cached once per level)."""

    def __init__(self, member: Member, cfg: TrainConfig) -> None:
        self.model = member.model
        self.task = member.task  # its own data order, else the level's
        self.bn_l1 = member.bn_l1
        self.scales = list(bn_scales(member.model).values()) if member.bn_l1 else []
        self.opt = make_optimizer(member.model, cfg)  # fresh optimizer state every level
        params = dict(member.model.named_parameters())
        mask = member.mask or {}
        self.params: list[torch.Tensor] = [params[n] for n in mask]
        self.masks: list[torch.Tensor] = [m.to(device=params[n].device, dtype=params[n].dtype)
                                          for n, m in mask.items()]

    def step(self, task: Task, it: int, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss = (self.task or task).step_loss(self.model, it)
        loss.backward()
        add_l1(self.scales, self.bn_l1)
        if self.params:
            grads = [p.grad for p in self.params if p.grad is not None]
            if len(grads) == len(self.params):
                torch._foreach_mul_(grads, self.masks)  # type: ignore[arg-type]
            self.opt.step()
            with torch.no_grad():
                torch._foreach_mul_(self.params, self.masks)  # type: ignore[arg-type]
        else:
            self.opt.step()


@torch.no_grad()
def add_l1(params: Sequence[torch.Tensor], coef: float) -> None:
    """Add the subgradient of coef * sum|p| to each parameter's gradient."""
    for p in params:
        if p.grad is not None:
            p.grad.add_(torch.sign(p), alpha=coef)
