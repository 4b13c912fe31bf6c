"""The classification family: every dataset of datasets.py, trained as image (or vector) classification.

Its own keys are the synthetic dataset's (`data.input_shape`, `data.num_classes`, `data.size`), checked on
every ticket so a typo fails before anything loads.
"""

from __future__ import annotations

import torch

from trainables.config import Ticket
from trainables.tasks.base import Family, Task
from trainables.tasks.classification.data import load
from trainables.tasks.classification.datasets import SOURCES, parse_shape
from trainables.tasks.classification.task import Classification
from trainables.typed import in_range


def make(ticket: Ticket, device: torch.device | str) -> Task:
    return Classification(load(ticket.data, device), batch_size=ticket.train.batch_size, seed=ticket.train.seed)


def check(ticket: Ticket) -> None:
    d = ticket.data
    parse_shape(d.input_shape)
    in_range("data.num_classes", d.num_classes, 2, 100_000)
    in_range("data.size", d.size, 10, 10**8)


FAMILY = Family(names=tuple(SOURCES), make=make, score="accuracy", check=check)
