"""A ticket search that takes IMP's dense level from the stage store when another trial trained it.

`StagedLottery(ticket, store=StageStore(root))` runs exactly as `Lottery` does, except level 0: under the
stage key of the dense level (trainables/io/stages.py) it loads the level's result, epoch rows and each
replicate's trained weights, and the rewind snapshot under its own key, instead of training them. Trials
that need one state at the same time train it once (the store's lease); a trial that finds the dense
level stored but not the snapshot at its `prune.rewind_iter` trains the prefix 0..k alone.

Everything after level 0 is the same computation on the same inputs, so the ticket is identical to one
searched without the store. The books stay honest: `state.epochs_total` counts the epochs the ticket
represents (ASHA's time attribute: trials are compared at equal search progress), `state.epochs_trained`
the epochs this trial trained, and `state.reused_stage` says the dense level was loaded. The loaded
level's epoch rows are replayed to `on_epoch`, so trackers see the same curves.
"""

from __future__ import annotations

from typing import Any

import torch

from trainables import seeds
from trainables.config import Ticket
from trainables.io import stages
from trainables.io.checkpoint import copy_weights
from trainables.io.results import LevelResult
from trainables.io.stagestore import Entry, StageStore
from trainables.lottery import Lottery
from trainables.training.loop import Hooks, train_members
from trainables.training.members import TICKET, Member


class StagedLottery(Lottery):
    """`Lottery` whose dense level comes from `store` when it is stored (see the module docstring)."""

    def __init__(self, ticket: Ticket, *, store: StageStore, **kwargs: Any) -> None:
        super().__init__(ticket, **kwargs)
        self.store = store
        self.stage_key = stages.dense_key(ticket, self.device)  # None: this ticket's level 0 is not reused

    def _train_level(self) -> LevelResult:
        if self.state.level != 0 or self.stage_key is None:
            return super()._train_level()
        train, produced = super()._train_level, []

        def produce() -> Entry:
            rows: list[dict[str, Any]] = []
            listener = self.on_epoch

            def record(row: dict[str, Any]) -> None:
                rows.append(dict(row))
                if listener is not None:
                    listener(row)

            self.on_epoch = record
            try:
                result = train()
            finally:
                self.on_epoch = listener
            produced.append(result)
            return self._dense(result, rows).entry()

        entry, reused = self.store.obtain(self.stage_key, produce)
        if not reused:
            k = self.ticket.prune.rewind_iter
            if k and not stages.rewind_in_stage(self.ticket):  # the snapshot this run captured on its way
                self.store.save(stages.snapshot_key(self.stage_key, k), *stages.snapshot_entry(self.state.rewind))
            return produced[0]
        return self._load(stages.Dense.from_entry(entry))

    def _dense(self, result: LevelResult, rows: list[dict[str, Any]]) -> stages.Dense:
        """The just-trained level 0 as a stage entry."""
        s = self.state
        return stages.Dense(result, rows, [copy_weights(m.model.state_dict()) for m in self._trained],
                            [m.model.training for m in self._trained],
                            s.rewind if stages.rewind_in_stage(self.ticket) else None, s.start_iter,
                            {"key": stages.eb_key(self.ticket), "epoch": s.early_bird_epoch, "state": s.early_bird})

    def _load(self, dense: stages.Dense) -> LevelResult:
        """Level 0 from the store: the state as training it would have left it."""
        s, p = self.state, self.ticket.prune
        s.reused_stage = True
        if self.on_epoch is not None:
            for row in dense.rows:
                self.on_epoch({**row, "epochs_trained": s.epochs_trained})
        self._trained = []
        for r, (weights, training) in enumerate(zip(dense.trained, dense.training, strict=True)):
            model = self.new_model(self.init_seed(r))
            model.load_state_dict(weights)
            model.train(training)
            self._trained.append(Member(TICKET, r, model, s.masks[r]))
        if dense.early_bird["key"] == stages.eb_key(self.ticket):
            s.early_bird_epoch, s.early_bird = dense.early_bird["epoch"], dense.early_bird["state"]
        if dense.rewind is not None:
            s.rewind, s.start_iter = dense.rewind, dense.start_iter
        elif p.rewind_iter:
            assert self.stage_key is not None
            entry, _ = self.store.obtain(stages.snapshot_key(self.stage_key, p.rewind_iter), self._prefix)
            s.rewind, s.start_iter = stages.snapshot_from_entry(entry), p.rewind_iter
        s.epochs_total += dense.result.epochs
        dense.result.masks = [{n: m.to(self.device) for n, m in mask.items()} for mask in dense.result.masks]
        dense.result.reused_stage = True
        return dense.result

    def _prefix(self) -> Entry:
        """Train level 0's members from initialisation to k alone: the snapshot the full level passes."""
        k = self.ticket.prune.rewind_iter
        members = self.members(0)  # the tickets from the initialisation (state.rewind is still it)
        torch.manual_seed(seeds.level(self.ticket.train.seed, 0))
        # the same loop as level 0 (a hook at each epoch start, as Early-Bird's watch makes it sync there)
        end = train_members(members, self.task, self.ticket.train, start=0, stop=k, capture_at=k,
                            hooks=Hooks(epoch_start=lambda epoch, ms: False))
        self.state.epochs_trained += end / self.ipe
        return stages.snapshot_entry([copy_weights(m.snapshot or m.model.state_dict()) for m in members])
