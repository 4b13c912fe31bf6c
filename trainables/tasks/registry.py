"""What the training loop needs to know about a problem: batches, loss and evaluation.

The loop in `train.py` is generic over a `Task`; `make_task(ticket)` picks it from `data.name`:
image (or vector) classification here, language modelling on `pydoc` (tasks_lm.py), and RL policies
on `gym:<EnvId>` (tasks_rl.py). Every task reports `loss`, `acc` and `score` (higher is better) beside
its natural metrics: the score is the accuracy for classification, minus the perplexity for language
models and the mean episode return for policies. `build_model` builds the network a task trains.

Data order is a pure function of (seed, iteration): for classification iteration `it` reads batch
`it % ipe` of the permutation of epoch `it // ipe`; a language model's windows start at offsets drawn
from (seed, it); a policy's environments reset from seeds drawn from (seed, it). That is what makes
rewinding to iteration k restore the data order at k, and lets every member of a trial see the same
batches (or episodes).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import CORPORA, Ticket, is_gym
from trainables.models.registry import build
from trainables.tasks.classification.data import Dataset, Split, augment_batch
from trainables.tasks.classification.data import load as load_data

Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_CHUNK = 4096  # examples per evaluation forward pass: bounds memory, keeps passes few


class Task(Protocol):
    """The contract between the training loop and a problem.

    `step_loss(model, it)` is what the loop calls: the loss of iteration `it` for one member. Supervised
    tasks (`shared_batches = True`) answer it from `batch(it)`, the same batch for every member, which
    lets members train together in one batched pass; a task whose data depends on the member (an RL
    policy's own rollouts) sets `shared_batches = False` and the loop trains members one by one.
    """

    input_shape: tuple[int, ...]  # one input's shape, for SynFlow's input of ones
    num_outputs: int  # classes, vocabulary or actions: with input_shape, what `build_model` needs
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
        self.num_outputs = data.num_classes
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


def make_task(ticket: Ticket, device: torch.device | str = "cpu") -> Task:
    """The task `data.name` names, its data on `device`: a corpus, an environment, else a dataset."""
    d, tr = ticket.data, ticket.train
    if d.name in CORPORA:
        from trainables.tasks.lm.corpus import load_corpus  # imported late: each task's workers need only theirs
        from trainables.tasks.lm.task import LanguageModelling

        return LanguageModelling(load_corpus(d), context=ticket.model.context, batch_size=tr.batch_size,
                                 seed=tr.seed, device=device)
    if is_gym(d.name):
        from trainables.tasks.rl import envs
        from trainables.tasks.rl.task import PolicyTask

        return PolicyTask(envs.spec(d.name.split(":", 1)[1]), ticket.rl, batch_size=tr.batch_size, seed=tr.seed)
    return Classification(load_data(d, device), batch_size=tr.batch_size, seed=tr.seed)


def shapes(ticket: Ticket) -> tuple[tuple[int, ...], int]:
    """(input_shape, num_outputs) of the ticket's task, read from its data (or environment) on the CPU.

    Also the preflight check that the data is there: a missing dataset raises its ConfigError."""
    task = make_task(ticket, "cpu")
    return task.input_shape, task.num_outputs


def build_model(ticket: Ticket, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """A freshly initialised network for the ticket's task (seed it with `torch.manual_seed` first).

    An RL policy is `model.name` built for the observations and actions, beside a dense critic: an MLP
    of `model.widths` (models_rl.py)."""
    net = build(ticket.model, input_shape, num_outputs)
    if is_gym(ticket.data.name):
        from trainables.tasks.rl.policy import actor_critic

        return actor_critic(net, math.prod(input_shape), ticket.model.widths)
    return net
