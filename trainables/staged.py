"""A ticket search that takes IMP's levels from the stage store when another trial trained them.

`StagedLottery(ticket, store=StageStore(root))` runs exactly as `Lottery` does, except that each level is first
looked up in the store under its stage key (trainables/io/stages.py): level 0 under the dense key, level L >= 1
under the key of its prefix. A stored level's result, epoch rows and each replicate's trained weights are
loaded instead of trained (for level 0 also the rewind snapshot under its own key); a level not stored is
trained and filed. Trials that need one level at the same time train it once (the store's lease); a trial that
finds the dense level stored but not the snapshot at its `prune.rewind_iter` trains the prefix 0..k alone.

The next level's mask is computed from the loaded weights as from trained ones, so the ticket is identical to
one searched without the store. The books stay honest: `state.epochs_total` counts the epochs the ticket
represents (ASHA's time attribute: trials are compared at equal search progress), `state.epochs_trained` the
epochs this trial trained, `state.reused_stage` says a level was loaded and each `LevelResult.reused_stage`
which. A loaded level's epoch rows are replayed to `on_epoch`, so trackers see the same curves.
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
    """`Lottery` whose levels come from `store` when they are stored (see the module docstring)."""

    def __init__(self, ticket: Ticket, *, store: StageStore, **kwargs: Any) -> None:
        super().__init__(ticket, **kwargs)
        self.store = store
        self.stage_key = stages.dense_key(ticket, self.device)  # None: this ticket's level 0 is not reused

    def _key(self) -> str | None:
        """This level's stage key (None: not reused)."""
        if self.stage_key is None or self.state.level == 0:
            return self.stage_key
        return stages.level_key(self.stage_key, self.ticket, self.state.level)

    def _train_level(self) -> LevelResult:
        key = self._key()
        if key is None:
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
            return self._entry(result, rows).entry()

        entry, reused = self.store.obtain(key, produce)
        if not reused:
            k = self.ticket.prune.rewind_iter
            if self.state.level == 0 and k and not stages.rewind_in_stage(self.ticket):  # captured on its way
                assert self.stage_key is not None
                self.store.save(stages.snapshot_key(self.stage_key, k), *stages.snapshot_entry(self.state.rewind))
            return produced[0]
        return self._load(stages.Level.from_entry(entry))

    def _entry(self, result: LevelResult, rows: list[dict[str, Any]]) -> stages.Level:
        """The level just trained as a stage entry (the rewind point and Early-Bird's observation: level 0 only)."""
        s = self.state
        first = s.level == 0
        return stages.Level(result, rows, [copy_weights(m.model.state_dict()) for m in self._trained],
                            [m.model.training for m in self._trained],
                            s.rewind if first and stages.rewind_in_stage(self.ticket) else None, s.start_iter,
                            {"key": stages.eb_key(self.ticket) if first else None, "epoch": s.early_bird_epoch,
                             "state": s.early_bird})

    def _load(self, stored: stages.Level) -> LevelResult:
        """A level from the store: the state as training it would have left it."""
        s = self.state
        s.reused_stage = True
        if self.on_epoch is not None:
            for row in stored.rows:
                self.on_epoch({**row, "epochs_trained": s.epochs_trained})
        stored.result.masks = [{n: m.to(self.device) for n, m in mask.items()} for mask in stored.result.masks]
        if s.level > 0:  # the masks the loaded weights trained under (equal to ours, unless another machine's
            s.masks = [dict(mask) for mask in stored.result.masks]  # kernels broke a tie in scoring differently)
        self._trained = []
        for r, (weights, training) in enumerate(zip(stored.trained, stored.training, strict=True)):
            model = self.new_model(self.init_seed(r))
            model.load_state_dict(weights)
            model.train(training)
            self._trained.append(Member(TICKET, r, model, s.masks[r]))
        if s.level == 0:
            self._rewind_point(stored)
        s.epochs_total += stored.result.epochs
        stored.result.reused_stage = True
        return stored.result

    def _rewind_point(self, stored: stages.Level) -> None:
        """After a loaded level 0: Early-Bird's observation (under this ticket's keys) and the rewind point, from
        the level's entry or the snapshot's (trained now, alone, when nobody stored it)."""
        s, k = self.state, self.ticket.prune.rewind_iter
        if stored.early_bird["key"] == stages.eb_key(self.ticket):
            s.early_bird_epoch, s.early_bird = stored.early_bird["epoch"], stored.early_bird["state"]
        if stored.rewind is not None:
            s.rewind, s.start_iter = stored.rewind, stored.start_iter
        elif k:
            assert self.stage_key is not None
            entry, _ = self.store.obtain(stages.snapshot_key(self.stage_key, k), self._prefix)
            s.rewind, s.start_iter = stages.snapshot_from_entry(entry), k

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
