"""What the training loop needs to know about a problem: batches, loss and evaluation.

The loop in `train.py` is generic over a `Task`. Image classification is the first task; language
modelling and RL policies plug in behind the same small interface. Every task reports `score`
(higher is better) beside its natural metrics; for classification the score is the accuracy.

Data order is a pure function of (seed, iteration): iteration `it` reads batch `it % ipe` of the
permutation of epoch `it // ipe`. That is what makes rewinding to iteration k restore the data order
at k, and lets every member of a trial see the same batches.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import Dataset, Split, augment_batch

Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_CHUNK = 4096  # examples per evaluation forward pass: bounds memory, keeps passes few


class Task(Protocol):
    """The contract between the training loop and a problem.

    `step_loss(model, it)` is what the loop calls: the loss of iteration `it` for one member. Supervised
    tasks (`shared_batches = True`) answer it from `batch(it)`, the same batch for every member, which
    lets members train together in one batched pass; a task whose data depends on the member (an RL
    policy's own rollouts) sets `shared_batches = False` and the loop trains members one by one.
    """

    input_shape: tuple[int, ...]
    shared_batches: bool

    def iters_per_epoch(self) -> int: ...

    def batch(self, it: int) -> Batch: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def step_loss(self, model: nn.Module, it: int) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...

    def score_batches(self) -> list[Batch]: ...


class Classification:
    """Image (or vector) classification on an in-memory `Dataset` held on the training device."""

    shared_batches = True

    def __init__(self, data: Dataset, *, batch_size: int, seed: int) -> None:
        self.data = data
        self._batch_it = -1
        self._batch: Batch | None = None
        self.input_shape = data.input_shape
        self.batch_size = min(batch_size, len(data.train))
        self.seed = seed
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def iters_per_epoch(self) -> int:
        return -(-len(self.data.train) // self.batch_size)  # ceil: every example once per epoch

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:  # one permutation per epoch, cached: batches are slices of it
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
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
            x = augment_batch(x, torch.Generator().manual_seed(self.seed * 7_919 + it))
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

    def score_batches(self) -> list[Batch]:
        """Data for SNIP (first batch) and GraSP: 10 training examples per class, fixed order."""
        y = self.data.train.y
        picks = [torch.nonzero(y == c).flatten()[:10] for c in range(self.data.num_classes)]
        idx = torch.cat(picks)
        return [(self.data.train.x[idx], y[idx])]


def make_task(data: Dataset, *, batch_size: int, seed: int) -> Task:
    """The task for a dataset (classification for every dataset so far)."""
    return Classification(data, batch_size=batch_size, seed=seed)
