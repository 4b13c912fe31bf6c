"""Language modelling as a task: next-token prediction on the `pydoc` corpus, scored by perplexity.

A batch is `train.batch_size` windows of `model.context` tokens starting at random offsets of the
training text, and the targets are the same windows shifted by one token. The offsets of iteration `it`
come from a generator seeded with (train.seed, it) (trainables/seeds.py: data_order), so data order is a
pure function of the iteration, as for classification: rewinding to k restores it and every member sees the same batch
(`shared_batches = True`). An epoch is as many iterations as it takes to draw as many tokens as the
training text holds.

Evaluation cuts the whole validation (or test) text into consecutive windows, each scored without
memory of the previous one, so every token but the first is predicted exactly once. It reports
`loss` (mean cross entropy, nats per token), `perplexity` = exp(loss), `acc` (next-token top-1
accuracy) and `score` = -perplexity (higher is better, as the search wants).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables import seeds
from trainables.tasks.base import Batch
from trainables.tasks.lm.corpus import Corpus

EVAL_WINDOWS = 256  # windows per evaluation forward pass: bounds memory (256 x 64 tokens x vocab logits)
SCORE_SEED = 7_777  # windows for SNIP/GraSP: fixed, apart from any training iteration's seed
SCORE_WINDOWS = 64


class LanguageModelling:
    """Next-token prediction on a tokenised corpus whose id tensors sit on the training device."""

    shared_batches = True

    def __init__(self, corpus: Corpus, *, context: int, batch_size: int, seed: int,
                 device: torch.device | str = "cpu") -> None:
        self.corpus = corpus
        self.splits = {s: getattr(corpus, s).to(device) for s in ("train", "val", "test")}
        self.context, self.batch_size, self.seed = context, batch_size, seed
        self.vocab = len(corpus.vocab)
        # SynFlow's input of ones is this shape: every token at once, at every position.
        self.input_shape: tuple[int, ...] = (context, self.vocab)
        self.num_outputs = self.vocab
        if len(corpus.train) <= context + 1:
            raise ValueError(f"the training text ({len(corpus.train)} tokens) is shorter than one window")
        self._batch_it, self._batch = -1, (torch.empty(0), torch.empty(0))

    def iters_per_epoch(self) -> int:
        return -(-len(self.corpus.train) // (self.batch_size * self.context))  # ceil: one text's worth

    def reordered(self, seed: int) -> LanguageModelling:
        """The same task (same token tensors, no copy) whose training windows come from `seed`."""
        other = copy.copy(self)
        other.seed = seed
        other._batch_it = -1
        return other

    def _windows(self, starts: torch.Tensor) -> Batch:
        text = self.splits["train"]
        offsets = starts.to(text.device)[:, None] + torch.arange(self.context + 1, device=text.device)
        chunk = text[offsets]  # (batch, context + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def _starts(self, seed: int, count: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, len(self.corpus.train) - self.context, (count,), generator=g)

    def batch(self, it: int) -> Batch:
        if it != self._batch_it:  # every member of a level asks for it in turn
            self._batch_it = it
            self._batch = self._windows(self._starts(seeds.data_order(self.seed, it), self.batch_size))
        return self._batch

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean next-token cross entropy. The scorers call this one: cuDNN's LSTM kernel cannot be
        differentiated twice (GraSP), so on a GPU it runs the native kernel; training does not."""
        with torch.backends.cudnn.flags(enabled=False):
            return self._loss(model, batch)

    @staticmethod
    def _loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    def step_loss(self, model: nn.Module, it: int) -> torch.Tensor:
        return self._loss(model, self.batch(it))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Loss, perplexity, next-token accuracy and score (= -perplexity) over a whole split, eval mode."""
        text = self.splits[split]
        n = len(text) - 1  # predicted tokens
        if n < 1:
            return {"loss": math.nan, "perplexity": math.nan, "acc": math.nan, "score": math.nan}
        was_training = model.training
        model.eval()
        total, correct = 0.0, 0
        full = n // self.context
        body = text[:full * self.context + 1]
        for i in range(0, full, EVAL_WINDOWS):  # consecutive whole windows, EVAL_WINDOWS at a time
            rows = torch.arange(i, min(i + EVAL_WINDOWS, full), device=text.device)
            idx = rows[:, None] * self.context + torch.arange(self.context + 1, device=text.device)
            t, c = self._sum(model, body[idx])
            total, correct = total + t, correct + c
        if n % self.context:  # the tail shorter than a window
            t, c = self._sum(model, text[full * self.context:][None])
            total, correct = total + t, correct + c
        model.train(was_training)
        loss = total / n
        perplexity = math.exp(loss) if loss < 700 else math.inf  # exp overflows a double past ~709
        return {"loss": loss, "perplexity": perplexity, "acc": correct / n, "score": -perplexity}

    @staticmethod
    def _sum(model: nn.Module, chunk: torch.Tensor) -> tuple[float, int]:
        logits = model(chunk[:, :-1])
        y = chunk[:, 1:]
        total = float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        return total, int((logits.argmax(-1) == y).sum())

    def score_batches(self, *, examples: int = 10, per_class: bool = True,
                      generator: torch.Generator | None = None) -> list[Batch]:
        """One fixed batch of training windows for SNIP and GraSP (never an iteration's own batch); the
        amount and draw settings are the classification task's."""
        return [self._windows(self._starts(SCORE_SEED, SCORE_WINDOWS))]
