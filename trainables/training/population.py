"""Population training: a trial's members trained together in one batched pass (DESIGN.md section 8).

The members of a level (ticket, controls, replicate seeds) share the architecture, the hyperparameters
and, for tasks with `shared_batches`, every batch (an instability twin reads the same data in its own order:
then each member's batch is stacked and vmap maps over it too). Here their parameters and buffers are stacked into
leaf tensors of shape (M, ...) and one `torch.vmap`-ed `functional_call` runs all M forward passes on the
same batch; the loss is the sum of the members' mean losses, so each member's gradient is exactly its
solo gradient. One optimizer over the stacked leaves is M independent optimizers: SGD (momentum, L2 decay),
Adam and AdamW act elementwise and all members share one step count (bias correction included).
Masks are stacked too: gradients are masked before the step and weights zeroed after it, as in
the one-by-one stepper (steppers.py). BatchNorm running statistics are stacked buffers updated in place
under `vmap`. `Population` is a stepper of the one training loop (loop.py), which writes the stacked
weights back into the members' models (`sync`) before anything reads them.

Results match one-by-one training within float32 rounding (batched matrix products sum in another order);
members end up exactly as after it: weights and buffers written back, one history row per evaluation
(each member evaluated with `task.evaluate`), snapshots, hooks at the same points.

Which stepper trains a level is chosen by `batched` (called by `loop.train_members`), steered by the
environment variable `TICKET_SEARCH_POPULATION`:
  unset, "" or "auto"  batched when the task shares batches, the model batches and it pays: on a GPU from 2
                       members, on a CPU from 4 members of a model without convolutions (measured on one core:
                       a batched step costs ~1.3 ms more than one member's, so 2 lenet300 members run 0.8x as
                       fast batched and 8 run 1.6x; resnet20 runs 0.8x, vmap making its convolutions grouped);
  "1"                  batched whenever the model batches, a single member too (tests, benchmarks);
  "0"                  never: one member after another.
A model that cannot batch (dropout, whose draws differ per member, or an operation `vmap` rejects, found
by one probe step before training) falls back to one-by-one, said on the logger "trainables.population".

Example (force the batched path for one run):
    TICKET_SEARCH_POPULATION=1 ticket-search run --set prune.controls=reinit,shuffle
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from trainables.config import TrainConfig
from trainables.pruning.earlybird import bn_scales
from trainables.tasks.base import Batch, Task
from trainables.training.members import Member
from trainables.training.optim import make_optimizer
from trainables.training.steppers import add_l1
from trainables.typed import ConfigError

ENV = "TICKET_SEARCH_POPULATION"
MODES = {"": "auto", "auto": "auto", "1": "on", "true": "on", "on": "on", "0": "off", "false": "off",
         "off": "off"}
log = logging.getLogger("trainables.population")  # a public name (users filter on it): kept where the module moved
_warned: set[str] = set()  # fallback reasons already logged at WARNING in this process
MIN_MEMBERS = {"cuda": 2, "cpu": 4}  # auto mode: fewest members worth one batched pass, per device type
CPU_SLOW = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # auto mode on a CPU: layers that batch slower than one by one


class Unsupported(RuntimeError):
    """These members cannot be trained in one batched pass; the message says why."""


def mode() -> str:
    """`auto`, `on` or `off`, from the environment variable `TICKET_SEARCH_POPULATION`."""
    raw = os.environ.get(ENV, "").strip().lower()
    if raw not in MODES:
        raise ConfigError(f"{ENV}: unknown value '{raw}'; valid choices: auto, 1, 0")
    return MODES[raw]


def check(members: list[Member], task: Task) -> None:
    """Raise `Unsupported` unless the members can share one batched pass (a static check, no compute)."""
    if not getattr(task, "shared_batches", False):
        raise Unsupported("the task's batches depend on the member (shared_batches is false)")
    first = members[0].model
    sig = _signature(first)
    for m in members[1:]:
        if _signature(m.model) != sig:
            raise Unsupported(f"member {m.name} (replicate {m.replicate}) has another architecture")
    for name, module in first.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise Unsupported(f"module '{name}' is dropout: its random draws cannot match one-by-one training")


def _signature(model: nn.Module) -> list[tuple[Any, ...]]:
    params = [(n, p.shape, p.dtype, p.device, p.requires_grad) for n, p in model.named_parameters()]
    buffers = [(n, b.shape, b.dtype, b.device) for n, b in model.named_buffers()]
    return [*params, *buffers, *((n, type(m)) for n, m in model.named_modules())]


def batched(members: list[Member], task: Task, cfg: TrainConfig, *, start: int, stop: int) -> Population | None:
    """The batched stepper for these members, or None (logged) when one-by-one must train them."""
    chosen = mode()
    if chosen == "off" or not members:
        return None
    if not getattr(task, "shared_batches", False):  # by design (an RL policy's own rollouts): no warning
        log.debug("training %d members one by one: each member has its own batches", len(members))
        return None
    if chosen == "auto":
        why_not = _not_worth_it(members)
        if why_not:
            log.debug("training %d members one by one: %s", len(members), why_not)
            return None
    try:
        stepper = Population(members, task, cfg, start=start)
    except Unsupported as why:
        reason = f"{type(members[0].model).__name__}: {why}"
        level = logging.WARNING if reason not in _warned else logging.INFO
        _warned.add(reason)
        log.log(level, "training %d members one by one, not batched: %s", len(members), reason)
        return None
    log.debug("training %d members batched from iteration %d to %d", len(members), start, stop)
    return stepper


def _not_worth_it(members: list[Member]) -> str:
    """Why auto mode trains these members one by one although it could batch them ("" = it batches)."""
    first = members[0].model
    device = next(first.parameters()).device.type
    fewest = MIN_MEMBERS.get(device, MIN_MEMBERS["cuda"])
    if len(members) < fewest:
        return f"fewer than {fewest} members on {device}"
    if device == "cpu" and any(isinstance(m, CPU_SLOW) for m in first.modules()):
        return "convolutions batch no faster than one by one on a CPU"
    return ""


class _LossOf(nn.Module):
    """The task's loss as a module, so `functional_call` can swap the wrapped model's tensors."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task_loss = task.loss

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.task_loss(self.model, batch)


class Population:
    """The batched stepper: stacked weights, buffers, masks and one optimizer for M members; `sync` copies
    them out. Raises `Unsupported` before changing anything when the members cannot share one pass.

    `autocast` (e.g. torch.bfloat16) runs the forward pass under `torch.autocast`: faster on GPUs, but then
    the results no longer match float32 one-by-one training. Hooks see the members' models up to date but
    must not change their weights: the stacked copies are what trains, written back one way."""

    def __init__(self, members: list[Member], task: Task, cfg: TrainConfig, *, start: int = 0,
                 autocast: torch.dtype | None = None) -> None:
        check(members, task)
        for m in members:
            m.model.train()
        self.members, self.task = members, task
        first = members[0].model
        self.device = next(first.parameters()).device
        self.autocast = autocast
        with torch.no_grad():
            per_member = [dict(m.model.named_parameters()) for m in members]
            self.params = {n: nn.Parameter(torch.stack([d[n].detach() for d in per_member]),
                                           requires_grad=p.requires_grad) for n, p in first.named_parameters()}
            bufs = [dict(m.model.named_buffers()) for m in members]
            self.buffers = {n: torch.stack([d[n] for d in bufs]) for n, _ in first.named_buffers()}
        wrapper = _LossOf(first, task)
        # A member with a task of its own (the instability twin) reads its own batches: then every member's
        # batch is stacked and mapped over (in_dims 0) instead of shared (None). Still one pass.
        self._own = [m.task for m in members] if any(m.task is not None for m in members) else None
        self._losses = torch.vmap(lambda p, b, batch: functional_call(wrapper, (p, b), (batch,)),
                                  in_dims=(0, 0, None if self._own is None else 0))
        self._probe(self._batch(start))
        l1 = {m.bn_l1 for m in members}
        if len(l1) > 1:
            raise Unsupported("members differ in their BatchNorm L1 penalty")
        self.bn_l1 = l1.pop()
        self.scales = [self.params[n] for n in bn_scales(first)] if self.bn_l1 else []
        self.opt = make_optimizer(nn.ParameterList(self.params.values()), cfg)  # fresh state every level
        self.masked, self.masks = self._stack_masks()
        if self.masked:  # as the one-by-one stepper: start from exactly zero pruned weights
            with torch.no_grad():
                torch._foreach_mul_(self.masked, self.masks)
        self.dirty = True  # the members' own weights are not yet zeroed where pruned
        # write-back pairs: each member's own tensors <- its slice of the stack (views, made once)
        self._targets: list[torch.Tensor] = []
        self._sources: list[torch.Tensor] = []
        for i, m in enumerate(members):
            for n, p in m.model.named_parameters():
                self._targets.append(p.data)
                self._sources.append(self.params[n].data[i])
            for n, b in m.model.named_buffers():
                self._targets.append(b)
                self._sources.append(self.buffers[n][i])

    def _probe(self, batch: Batch) -> None:
        """One forward and backward on copies of the buffers: `Unsupported` if `vmap` cannot take the model.

        It also lays each stacked weight out in memory the way its gradient arrives (batched backward passes
        often produce a weight's gradient transposed): autograd would otherwise copy every gradient into the
        weight's layout at every step, about a tenth of a step's time for lenet300 on a CPU."""
        arriving: dict[str, torch.Tensor] = {}
        hooks = [p.register_hook(lambda g, n=n: arriving.__setitem__(n, g.detach()))
                 for n, p in self.params.items() if p.requires_grad]
        try:
            with self._precision():
                losses = self._losses(*self._prefixed({n: b.clone() for n, b in self.buffers.items()}), batch)
            losses.sum().backward()
        except Exception as e:  # noqa: BLE001 - whatever vmap rejects, one-by-one training can still do
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise Unsupported(f"vmap cannot run it ({type(e).__name__}: {first[:200]})") from e
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            for n, g in arriving.items():
                old = self.params[n]
                if g.shape == old.shape and g.stride() != old.stride():
                    self.params[n] = nn.Parameter(_in_layout_of(old.detach(), g), requires_grad=old.requires_grad)
            for p in self.params.values():
                p.grad = None

    def _stack_masks(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Masked stacked weights and (M, ...) float masks; all-ones layers skipped (x * 1 changes nothing)."""
        names = [n for n in self.params if any(m.mask is not None and n in m.mask for m in self.members)]
        params: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for n in names:
            p = self.params[n]
            rows = [m.mask[n] if m.mask is not None and n in m.mask else torch.ones(p.shape[1:], dtype=torch.bool)
                    for m in self.members]
            stacked = torch.stack([r.to(p.device) for r in rows])
            if bool(stacked.all()):
                continue
            params.append(p)
            masks.append(torch.empty_like(p).copy_(stacked))  # the weight's dtype and memory layout
        return params, masks

    def _prefixed(self, buffers: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return ({f"model.{n}": p for n, p in self.params.items()}, {f"model.{n}": b for n, b in buffers.items()})

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.autocast is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast):
            yield

    def _batch(self, it: int) -> Batch:
        """Iteration `it`'s batch: shared, or each member's own stacked along a new first dimension."""
        if self._own is None:
            return self.task.batch(it)
        own = [(t or self.task).batch(it) for t in self._own]
        return tuple(torch.stack(parts) for parts in zip(*own, strict=True))  # type: ignore[return-value]

    def step(self, it: int, lr: float) -> None:
        batch = self._batch(it)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        with self._precision():
            losses = self._losses(*self._prefixed(self.buffers), batch)  # (M,): each member's mean loss
        losses.sum().backward()  # d(sum)/d(member i's weights) = d(loss_i)/d(its weights)
        add_l1(self.scales, self.bn_l1)  # elementwise: each member's own penalty
        if self.masked:
            grads = [p.grad for p in self.masked]
            if all(g is not None for g in grads):
                torch._foreach_mul_(grads, self.masks)  # type: ignore[arg-type]
            self.opt.step()
            with torch.no_grad():
                torch._foreach_mul_(self.masked, self.masks)
        else:
            self.opt.step()
        self.dirty = True

    @torch.no_grad()
    def sync(self) -> None:
        """Copy every member's slice of the stacked weights and buffers into its own model."""
        if self.dirty:
            torch._foreach_copy_(self._targets, self._sources)
            self.dirty = False


def _in_layout_of(src: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """A copy of `src` whose memory order is `layout`'s (when that is a dense permutation), else a clone."""
    strides = layout.stride()
    order = sorted(range(layout.dim()), key=lambda d: -strides[d])  # outermost dimension first
    if not layout.permute(order).is_contiguous():
        return src.clone()
    out = torch.empty([src.shape[d] for d in order], dtype=src.dtype, device=src.device)
    return out.permute([order.index(d) for d in range(layout.dim())]).copy_(src)
