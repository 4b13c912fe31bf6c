"""What the training loop needs to know about a problem (`Task`), and what a task family declares (`Family`).

The loop (trainables/training/) is generic over a `Task`: batches, loss and evaluation. Every task reports
`loss`, `acc` and `score` (higher is better) beside its natural metrics. Data order is a pure function of
(seed, iteration), which makes rewinding to iteration k restore the data order at k and lets every member
of a trial see the same batches (or episodes).

A task family is one folder under trainables/tasks/ (its data, its task, its task-only wrappers) whose
`family.py` declares a `Family`: the `data.name` values it owns, how it builds its task, what its score
means, and the checks of its own keys; trainables/tasks/registry.py lists the families.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from trainables.config import Ticket

# Families without an official test set hold out TEST_FRACTION of their data (examples, or a corpus's
# characters) as the test split, drawn with TEST_SEED: fixed, so the test set does not move when
# data.seed changes the validation split.
TEST_FRACTION = 0.2
TEST_SEED = 0

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets) of one step, or what a task's loss reads


class Task(Protocol):
    """The contract between the training loop and a problem.

    `step_loss(model, it)` is what the loop calls: the loss of iteration `it` for one member. Supervised
    tasks (`shared_batches = True`) answer it from `batch(it)`, the same batch for every member, which
    lets members train together in one batched pass; a task whose data depends on the member (an RL
    policy's own rollouts) sets `shared_batches = False` and the loop trains members one by one.
    """

    input_shape: tuple[int, ...]  # one input's shape, for SynFlow's input of ones
    num_outputs: int  # classes, vocabulary or actions: with input_shape, what a model is built for
    shared_batches: bool

    def iters_per_epoch(self) -> int: ...

    def batch(self, it: int) -> Batch: ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def step_loss(self, model: nn.Module, it: int) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...

    def score_batches(self, *, examples: int = 10, per_class: bool = True,
                      generator: torch.Generator | None = None) -> list[Batch]:
        """Data for SNIP and GraSP: `examples` per class (or in all) drawn with `generator` where the task
        draws examples (classification); other tasks have fixed scoring data and may ignore them."""


def _no_check(ticket: Ticket) -> None:
    """A family without keys of its own."""


def _as_built(ticket: Ticket, model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A family that trains `model.name` as the registry builds it."""
    return model


@dataclass(frozen=True)
class Family:
    """One task family, as the registry and the config see it."""

    names: tuple[str, ...]  # the data.name values it owns
    make: Callable[[Ticket, torch.device | str], Task]  # its task for a ticket, data on a device
    score: str  # what val_score/test_score measure (higher is better): "accuracy", "-perplexity", ...
    check: Callable[[Ticket], None] = _no_check  # its own keys, checked on every ticket (`register_check`)
    wrap: Callable[[Ticket, nn.Module, tuple[int, ...]], nn.Module] = _as_built  # task-only wrapper of a model
    prefix: str = ""  # data.name=<prefix><id> belongs to it too (the id is checked when the task is built)
    shown: str = ""  # how the prefix is shown among the valid choices, e.g. "gym:<EnvId>"
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # valid names of its other keys

    def owns(self, name: str) -> bool:
        return name in self.names or bool(self.prefix and name.startswith(self.prefix) and len(name) > len(self.prefix))
