"""The task-family registry: `data.name` picks the family, the family builds the task and the model it trains.

A family is one folder (its data, task and task-only wrappers, and `family.py` declaring its `Family`) plus
one line in `FAMILIES`. Importing this module registers every family's `data.name` values, its other keys'
valid names and its checks with the config (trainables/config.py), so `Ticket.from_flat` knows them.

Example:
    >>> from trainables.config import Ticket
    >>> family_of("gym:CartPole-v1").score, score_meaning("pydoc")
    ('mean return', '-perplexity')
    >>> task = make_task(Ticket())                           # digits classification, data on the CPU
    >>> model = build_model(Ticket(), task.input_shape, task.num_outputs)
"""

from __future__ import annotations

import torch
from torch import nn

from trainables import config
from trainables.config import Ticket
from trainables.models.registry import build
from trainables.tasks.base import Family, Task
from trainables.tasks.classification import family as classification
from trainables.tasks.lm import family as lm
from trainables.tasks.rl import family as rl
from trainables.typed import choice

FAMILIES: dict[str, Family] = {
    "classification": classification.FAMILY,
    "language modelling": lm.FAMILY,
    "rl policy": rl.FAMILY,
}



def _register(families: dict[str, Family]) -> None:
    """Tell the config each family's data.name values, its other keys' valid names, and its checks."""
    for family in families.values():
        config.register_names("data.name", family.names, prefix=family.prefix, shown=family.shown)
        for key, names in family.choices.items():
            config.register_names(key, names)
        config.register_check(family.check)


_register(FAMILIES)


def family_of(data_name: str) -> Family:
    """The family owning `data.name`; ConfigError listing the valid names when none does."""
    for family in FAMILIES.values():
        if family.owns(data_name):
            return family
    choice("data.name", data_name, config.choices("data.name"))
    raise AssertionError("unreachable: choice() raised")


def score_meaning(data_name: str) -> str:
    """What `val_score`/`test_score` measure for `data.name` (higher is better, always): `accuracy` (a
    fraction) for classification, `-perplexity` for language models, `mean return` for policies; a name no
    family owns (a run from elsewhere) reads as accuracy."""
    found = [f for f in FAMILIES.values() if f.owns(data_name)]
    return found[0].score if found else classification.FAMILY.score


def make_task(ticket: Ticket, device: torch.device | str = "cpu") -> Task:
    """The task `data.name` names, its data (corpus, environment, dataset) on `device`."""
    return family_of(ticket.data.name).make(ticket, device)


def shapes(ticket: Ticket) -> tuple[tuple[int, ...], int]:
    """(input_shape, num_outputs) of the ticket's task, read from its data (or environment) on the CPU.

    Also the preflight check that the data is there: a missing dataset raises its ConfigError."""
    task = make_task(ticket, "cpu")
    return task.input_shape, task.num_outputs


def build_model(ticket: Ticket, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """A freshly initialised network for the ticket's task (seed it with `torch.manual_seed` first):
    `model.name` from the model registry, wrapped as its family trains it (an RL policy beside its critic)."""
    return family_of(ticket.data.name).wrap(ticket, build(ticket.model, input_shape, num_outputs), input_shape)
