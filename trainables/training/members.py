"""A member: one model trained inside a trial (the ticket, a control, a replicate seed), and how it fails.

All members of a level start at the same iteration and see the same batch at every iteration (except a
member with a `task` of its own: the instability twin, same data in another order), so a stepper may train
them one by one or together (trainables/training/steppers.py, population.py). Training fills in
each member's `history` (one row per evaluation) and, at the rewind point, its `snapshot`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trainables.config import TICKET
from trainables.pruning.masks import Mask
from trainables.tasks.base import Task

TWIN = "twin"  # the instability analysis' second copy of a ticket: same start and mask, another data order
__all__ = ["TICKET", "TWIN", "Diverged", "Member"]  # TICKET: the config's, named here too for the members' users


class Diverged(RuntimeError):
    """A member's loss became NaN or infinite."""


@dataclass
class Member:
    """One model trained inside a trial, with its own weights, mask and optimizer."""

    name: str  # TICKET or a control's name
    replicate: int
    model: nn.Module
    mask: Mask | None = None
    task: Task | None = None  # its own data order (the instability twin): the level's task reordered
    bn_l1: float = 0.0  # L1 penalty on BatchNorm scaling factors (the Early-Bird channel search), per unit
    # filled in by training:
    history: list[dict[str, float]] = field(default_factory=list)
    snapshot: dict[str, torch.Tensor] | None = None  # weights captured at the loop's `capture_at`
