"""Image (or vector) classification on an in-memory `Dataset` held on the training device.

Data order is a pure function of (train.seed, iteration): iteration `it` reads batch `it % ipe` of the
permutation of epoch `it // ipe` (trainables/seeds.py: data_order), augmented with the draws of
iteration `it` (seeds.augmentation). Evaluation reports cross entropy, accuracy, and score = accuracy.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from trainables import seeds
from trainables.tasks.base import Batch
from trainables.tasks.classification.data import Dataset, Split, augment_batch

EVAL_CHUNK = 4096  # examples per evaluation forward pass: bounds memory, keeps passes few
SCORE_EXAMPLES = 10  # per class: GraSP's scoring batch (prune.score_examples' default)


class Classification:
    """Image (or vector) classification on an in-memory `Dataset` held on the training device."""

    shared_batches = True

    def __init__(self, data: Dataset, *, batch_size: int, seed: int) -> None:
        self.data = data
        self._batch_it = -1
        self._batch: Batch | None = None
        self.input_shape = data.input_shape
        self.num_outputs = data.num_classes
        self.batch_size = min(batch_size, len(data.train))
        self.seed = seed
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def iters_per_epoch(self) -> int:
        return -(-len(self.data.train) // self.batch_size)  # ceil: every example once per epoch

    def reordered(self, seed: int) -> Classification:
        """The same task (same data tensors, no copy) whose data order and augmentation come from `seed`."""
        other = copy.copy(self)
        other.seed = seed
        other._batch_it, other._batch, other._perm_epoch = -1, None, -1
        return other

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:  # one permutation per epoch, cached: batches are slices of it
            g = seeds.generator(seeds.data_order(self.seed, epoch))
            n = len(self.data.train)
            self._perm = torch.randperm(n, generator=g).to(self.data.train.x.device)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, it: int) -> Batch:
        if it == self._batch_it and self._batch is not None:  # every member of a level asks for it in turn
            return self._batch
        self._batch_it, self._batch = it, self._make_batch(it)
        return self._batch

    def _make_batch(self, it: int) -> Batch:
        ipe = self.iters_per_epoch()
        epoch, b = divmod(it, ipe)
        idx = self._permutation(epoch)[b * self.batch_size:(b + 1) * self.batch_size]
        x, y = self.data.train.x[idx], self.data.train.y[idx]
        if self.data.augment:
            x = augment_batch(x, seeds.generator(seeds.augmentation(self.seed, it)))
        return x, y

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def step_loss(self, model: nn.Module, it: int) -> torch.Tensor:
        return self.loss(model, self.batch(it))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Mean loss, accuracy and score (= accuracy) on `val` or `test`, in eval mode."""
        part: Split = getattr(self.data, split)
        if len(part) == 0:
            return {"loss": float("nan"), "acc": float("nan"), "score": float("nan")}
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0
        for i in range(0, len(part), EVAL_CHUNK):
            x, y = part.x[i:i + EVAL_CHUNK], part.y[i:i + EVAL_CHUNK]
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        model.train(was_training)
        acc = correct / len(part)
        return {"loss": total_loss / len(part), "acc": acc, "score": acc}

    def score_batches(self, *, examples: int = SCORE_EXAMPLES, per_class: bool = True,
                      generator: torch.Generator | None = None) -> list[Batch]:
        """Data for SNIP (first batch) and GraSP: `examples` training examples per class (or in all),
        drawn at random with `generator` (the replicate's scoring stream), or the first ones without it."""
        y = self.data.train.y
        if per_class:
            pools = [torch.nonzero(y == c).flatten() for c in range(self.data.num_classes)]
            idx = torch.cat([p[_draw(len(p), examples, generator, p.device)] for p in pools])
        else:
            idx = _draw(len(y), examples, generator, y.device)
        return [(self.data.train.x[idx], y[idx])]


def _draw(n: int, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`min(count, n)` indices below n: the first ones, or a random choice in random order."""
    if generator is None:
        return torch.arange(min(count, n), device=device)
    return torch.randperm(n, generator=generator)[:count].to(device)
