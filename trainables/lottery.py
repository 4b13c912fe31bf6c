"""Finding lottery tickets on one machine: IMP and pruning at initialisation, level by level.

`Lottery(ticket).run()` yields one `LevelResult` per finished level. After each yield `lottery.state`
is a complete level-boundary checkpoint (`checkpoint.save/load`): a search stopped there and resumed
gives identical results, because initialisation, data order, augmentation and the learning rate are
all pure functions of seeds and the global iteration.

- `imp`: level 0 trains the dense network (or a transferred mask); each later level prunes
  `prune.rate` of the remaining weights with the scorer, rewinds the rest to iteration
  `prune.rewind_iter` (0 = the original initialisation) and retrains from there.
- `init`: train to the rewind point (or an Early-Bird ticket), score and prune to
  `prune.target_density` in `prune.iterations` rounds, train once (reported as level 1).

Each level's members are assembled here: the ticket per replicate seed, then each replicate's controls
(trainables/pruning/controls.py). Every random draw comes from a named seed stream (trainables/seeds.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from trainables import seeds
from trainables.config import ConfigError, Ticket
from trainables.io.checkpoint import State, copy_weights
from trainables.io.maskio import load_init_mask
from trainables.io.packing import pack
from trainables.io.results import LevelResult, member_result, summarise
from trainables.pruning import controls, schedule, scorers
from trainables.pruning import masks as mk
from trainables.pruning import structure as st
from trainables.pruning.earlybird import EarlyBirdSearch
from trainables.pruning.imp import level_mask
from trainables.pruning.masks import refit
from trainables.pruning.sanity import inverted
from trainables.tasks.base import Task
from trainables.tasks.registry import build_model, make_task
from trainables.training import instability
from trainables.training.device import resolve_device
from trainables.training.loop import Hooks, train_members
from trainables.training.members import TICKET, TWIN, Member

EpochCallback = Callable[[dict[str, Any]], None]


class Lottery:
    """One ticket search. Iterate `run()`; `state` is a checkpoint after every yielded level."""

    def __init__(self, ticket: Ticket, *, state: State | None = None,
                 on_epoch: EpochCallback | None = None, device: str | torch.device | None = None) -> None:
        self.ticket = ticket
        self.device = torch.device(device) if device is not None else resolve_device(ticket.train.device)
        self.task: Task = make_task(ticket, self.device)
        self.ipe = self.task.iters_per_epoch()
        self.total = ticket.train.epochs * self.ipe
        if ticket.prune.rewind_iter >= self.total:
            raise ConfigError(f"prune.rewind_iter: {ticket.prune.rewind_iter} is not below the "
                              f"{self.total} iterations of training ({ticket.train.epochs} epochs)")
        self.state = state or State()
        self.on_epoch = on_epoch
        self._shares = self._kept_shares()
        self.levels_needed = schedule.levels_needed(ticket.prune, *self._shares)  # raises if out of reach
        self.levels = schedule.planned_levels(ticket.prune, self.levels_needed)  # the last level it trains
        if ticket.prune.instability:
            self._twin_task(0)  # a task without another data order fails here, before any training

    def _kept_shares(self) -> tuple[float, float]:
        """`schedule`'s (pool, output) shares of the level-0 mask; a model is built for them only when a
        target density needs counting (the output layer's share, a transferred mask's densities)."""
        p = self.ticket.prune
        if p.method != "imp" or p.target_density is None:
            return 1.0, 0.0
        with torch.random.fork_rng(devices=[]):  # shapes only: leave the seeded streams alone
            model = build_model(self.ticket, self.task.input_shape, self.task.num_outputs)
        return mk.kept_shares(self._first_mask(model, 0), self.output(model))

    def require_target_reached(self) -> None:
        """Refuse a `prune.levels` that stops short of `prune.target_density` (the `run` command asks, before
        training; library callers and a sweep's smoke cap may stop short on purpose)."""
        schedule.require_reach(self.ticket.prune, self.levels_needed, *self._shares)

    # -- models and seeds --------------------------------------------------------------------------
    def new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return build_model(self.ticket, self.task.input_shape, self.task.num_outputs).to(self.device)

    def output(self, model: nn.Module) -> str | None:
        """The output layer ranked at its own rate, or None when `prune.output_pool=pooled` puts it in the pool."""
        return mk.output_param(model) if self.ticket.prune.output_pool == "own" else None

    def init_seed(self, replicate: int) -> int:
        return seeds.init(self.ticket.train.seed, replicate)

    def members(self, level: int) -> list[Member]:
        """A level's members: tickets first (replicate order), then each replicate's controls."""
        p, seed = self.ticket.prune, self.ticket.train.seed
        tickets, others = [], []
        for r in range(p.replicates):
            mask = self.state.masks[r]
            tickets.append(Member(TICKET, r, self._rewound(r), mask, bn_l1=self._bn_l1(level)))
            if self._twins(level):
                others.append(Member(TWIN, r, self._rewound(r), mask, task=self._twin_task(r),
                                     bn_l1=self._bn_l1(level)))
            if mk.density(mask) >= 1.0:
                continue  # a dense level has nothing to control for
            output, structure = self.output(tickets[-1].model), st.of(p.structure, tickets[-1].model)
            for name in p.controls:
                control, gen = controls.get(name), seeds.control_mask(seed, r, level, name)
                model = self.new_model(seeds.control_init(seed, r, level)) if control.fresh_init else self._rewound(r)
                cmask = (self.state.invert[r] if control.scored
                         else st.control_mask(name, mask, gen, output, structure) or control.mask(mask, gen, output))
                others.append(Member(name, r, model, cmask))
        return tickets + others

    def _twins(self, level: int) -> bool:
        """Instability twins train at every level that starts from the rewind point (level 0 only at k = 0)."""
        return self.ticket.prune.instability and (level > 0 or self.ticket.prune.rewind_iter == 0)

    def _twin_task(self, replicate: int) -> Task:
        return instability.twin_task(self.task, self.ticket.data.name,
                                     seeds.twin_order(self.ticket.train.seed, replicate))

    def _bn_l1(self, level: int) -> float:
        """The L1 penalty on BatchNorm scaling factors: only while the Early-Bird channel search trains."""
        p = self.ticket.prune
        return p.eb_l1 if (level, p.early_bird, p.eb_structure) == (0, True, "channel") else 0.0

    def _rewound(self, replicate: int) -> nn.Module:
        model = self.new_model(self.init_seed(replicate))
        model.load_state_dict(self.state.rewind[replicate])
        return model

    # -- the search --------------------------------------------------------------------------------
    def run(self) -> Iterator[LevelResult]:
        while not self.state.done:
            if self.state.level == 0:
                self._start()
                if self.state.done:
                    break
            result = self._train_level()
            self.state.results.append(result)
            self._after_level(result)
            yield result

    def _start(self) -> None:
        """Level 0: dense (or transferred) members, rewind point, and for `init` the pruning itself."""
        p = self.ticket.prune
        reps = range(p.replicates)
        models = [self.new_model(self.init_seed(r)) for r in reps]
        self.state.rewind = [copy_weights(m.state_dict()) for m in models]
        self.state.masks = [self._first_mask(m, r) for r, m in enumerate(models)]
        if p.method == "imp":
            return  # level 0 is trained by _train_level like any other level
        k = p.rewind_iter
        if k > 0 or p.early_bird:
            members = [Member(TICKET, r, m, self.state.masks[r], bn_l1=self._bn_l1(0)) for r, m in enumerate(models)]
            stop = self.total if p.early_bird else k
            end = train_members(members, self.task, self.ticket.train, start=0, stop=stop,
                                hooks=self._hooks(0, 0, members))
            self.state.epochs_total += end / self.ipe
            self.state.epochs_trained += end / self.ipe
            self.state.rewind = [copy_weights(m.model.state_dict()) for m in members]
            self.state.start_iter = end
            if end >= self.total:
                raise ConfigError("prune.early_bird: no Early-Bird ticket appeared within train.epochs; "
                                  "raise prune.eb_epsilon or train.epochs")
        d = p.target_density or 1.0
        out_d = schedule.output_density_for(d, p.rate, p.output_rate)
        for r, m in enumerate(models):
            m.load_state_dict(self.state.rewind[r])
            first = self.state.masks[r]
            self.state.masks[r] = scorers.prune_at_init(
                m, first, self._score_ctx(r), scorer=p.scorer, density=d,
                output=self.output(m), output_density=out_d, scope=p.scope, iterations=p.iterations,
                structure=st.of(p.structure, m))
            if "invert" in p.controls:  # one-shot scores of the rewound network, as the first round saw them
                self._draw_invert(r, scorers.score(p.scorer, m, first, self._score_ctx(r)), first, m)
        self.state.level = 1

    def _first_mask(self, model: nn.Module, replicate: int) -> mk.Mask:
        mask = mk.ones(model, bias=self.ticket.prune.bias)
        if self.ticket.prune.init_mask:
            mask = refit(load_init_mask(self.ticket.prune.init_mask), model,
                         seeds.transfer(self.ticket.train.seed, replicate))
        return mask

    def _score_ctx(self, replicate: int) -> scorers.ScoreContext:
        """What the scorer of this replicate and level needs: SNIP/GraSP's examples drawn from its seed."""
        p, seed, level = self.ticket.prune, self.ticket.train.seed, self.state.level
        batches = self.task.score_batches(examples=p.score_examples, per_class=p.score_per == "class",
                                          generator=seeds.scoring_examples(seed, replicate, level)) \
            if p.scorer in scorers.DATA_SCORERS else []
        return scorers.ScoreContext(batches=batches, loss=self.task.loss, input_shape=self.task.input_shape,
                                    generator=seeds.scoring(seed, replicate, level), mode=p.score_mode)

    def _train_level(self) -> LevelResult:
        """Build this level's members, train them together from the rewind point, summarise."""
        level, start = self.state.level, self.state.start_iter if self.state.level > 0 else 0
        t0 = time.perf_counter()
        members = self.members(level)
        torch.manual_seed(seeds.level(self.ticket.train.seed, level))  # in-model randomness (dropout in tv: models)
        capture = self.ticket.prune.rewind_iter if (level == 0 and self.ticket.prune.rewind_iter) else None
        if capture is not None and self.ticket.prune.rewind_order == "restart":
            # open_lth's order: train to k, save it, then level 0 goes on from k with a fresh optimizer
            # (a new stepper) at the schedule position k, exactly as every later level starts.
            end = train_members(members, self.task, self.ticket.train, start=start, stop=capture,
                                capture_at=capture, hooks=self._hooks(level, start, members))
            if end == capture:
                end = train_members(members, self.task, self.ticket.train, start=capture, stop=self.total,
                                    hooks=self._hooks(level, start, members))
        else:
            end = train_members(members, self.task, self.ticket.train, start=start, stop=self.total,
                                capture_at=capture, hooks=self._hooks(level, start, members))
        self._trained = [m for m in members if m.name == TICKET]
        if level == 0 and capture is not None:  # rewind point k > 0 (or the Early-Bird point if training stopped first)
            self.state.rewind = [copy_weights(m.snapshot or m.model.state_dict()) for m in self._trained]
            self.state.start_iter = min(capture, end)
        epochs = (end - start) / self.ipe
        self.state.epochs_total += epochs
        self.state.epochs_trained += epochs
        rows = [member_result(m, self.task) for m in members if m.name != TWIN]
        ticket_masks = [m.mask if m.mask is not None else {} for m in self._trained]
        result = summarise(level, rows, ticket_masks, mk.layer_density(ticket_masks[0]),
                           sorted({n for m in ticket_masks for n in mk.collapsed(m)}),
                           epochs, end - start, time.perf_counter() - t0)
        if any(m.name == TWIN for m in members):
            result.instability = instability.of_level(self.task, members, self.ticket.prune.instability_alphas)
            result.wall_s = time.perf_counter() - t0
        result.weights = pack(self._trained[0].model.state_dict(), ticket_masks[0])  # the trained ticket, for export
        return result

    def _after_level(self, result: LevelResult) -> None:
        """Decide whether to stop; else prune every replicate's trained ticket for the next level."""
        p = self.ticket.prune
        target_reached = p.target_density is not None and result.density <= p.target_density + schedule.TOLERANCE
        # Derived levels get one more: exact weight counts round, and can leave the planned last level a
        # fraction of a weight above the target. The target test ends the search first.
        last = self.levels + (p.levels is None and p.target_density is not None)
        if p.method == "init" or result.level >= last or target_reached:
            self.state.done = True
            return
        nxt = result.level + 1
        self.state.level = nxt
        base = self.state.results[0].masks
        for r, m in enumerate(self._trained):
            scores = scorers.score(p.scorer, m.model, self.state.masks[r], self._score_ctx(r))
            before = self.state.masks[r]
            self.state.masks[r] = level_mask(scores, before, base[r], nxt, p.rate, p.output_rate,
                                             p.scope, self.output(m.model), st.of(p.structure, m.model))
            if "invert" in p.controls:
                self._draw_invert(r, scores, before, m.model)

    def _draw_invert(self, replicate: int, scores: dict[str, torch.Tensor], candidates: mk.Mask,
                     model: nn.Module) -> None:
        """The `invert` control's mask at the new ticket's per-layer counts (trainables/pruning/sanity.py)."""
        self.state.invert += [{}] * (replicate + 1 - len(self.state.invert))
        self.state.invert[replicate] = inverted(scores, candidates, self.state.masks[replicate],
                                                st.of(self.ticket.prune.structure, model), self.output(model))

    def _hooks(self, level: int, start: int, members: list[Member]) -> Hooks:
        hooks = Hooks(epoch_end=lambda epoch, it, ms: self._report(level, start, it, ms))
        p = self.ticket.prune
        if level == 0 and (p.early_bird or p.method == "imp"):
            hooks.epoch_start = self._early_bird_hook()
        return hooks

    def _early_bird_hook(self) -> Callable[[int, list[Member]], bool]:
        p = self.ticket.prune
        d = p.target_density if p.method == "init" and p.target_density else 1 - p.rate
        search = EarlyBirdSearch(p, d, self.output, self.state.early_bird)

        def epoch_start(epoch: int, members: list[Member]) -> bool:
            if self.state.early_bird_epoch is None:  # every replicate's ticket must have settled
                if search.update([(m.model, m.mask or {}) for m in members if m.name == TICKET]):
                    self.state.early_bird_epoch = epoch
                self.state.early_bird = search.state_dict()
            return bool(p.early_bird and self.state.early_bird_epoch is not None)

        return epoch_start

    def _report(self, level: int, start: int, it: int, members: list[Member]) -> None:
        if self.on_epoch is None:
            return  # nobody listens
        tickets = [m.history[-1] for m in members if m.name == TICKET]
        row: dict[str, Any] = {
            "level": level, "iteration": it, "epoch": it / self.ipe,
            "epochs_total": self.state.epochs_total + (it - start) / self.ipe,
            "iterations_total": round(self.state.epochs_total * self.ipe) + it - start,
            "epochs_trained": self.state.epochs_trained + (it - start) / self.ipe,
            "density": mk.density(members[0].mask) if members[0].mask else 1.0}
        for key in ("val_acc", "val_loss", "val_score"):
            row[key] = sum(t[key] for t in tickets) / len(tickets)
        self.on_epoch(row)

