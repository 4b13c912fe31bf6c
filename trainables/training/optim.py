"""Optimizers and learning-rate schedules by name: the `train.optimizer` and `train.lr_schedule` registries.

The learning rate is a pure function of the global iteration (warm-up, then the schedule's factor), so
rewinding to iteration k restores the schedule position without any scheduler state, and every level
starts a fresh optimizer. Each is one function plus one registry line; the names register themselves.

Example:
    >>> from trainables.config import TrainConfig
    >>> lr_at(75, 100, TrainConfig(lr=1.0, lr_schedule="step"))
    0.010000000000000002
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from trainables import config
from trainables.config import TrainConfig
from trainables.typed import lookup

Params = Iterable[torch.Tensor]

OPTIMIZERS: dict[str, Callable[[Params, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay),
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
}


def _cosine(it: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(it, total) / max(total, 1)))


def _step(it: int, total: int) -> float:
    return 0.1 ** ((it >= total // 2) + (it >= (3 * total) // 4))  # x0.1 at 50% and again at 75% of training


# factor of the peak rate at global iteration `it` of `total`
SCHEDULES: dict[str, Callable[[int, int], float]] = {"constant": lambda it, total: 1.0, "cosine": _cosine,
                                                      "step": _step}
config.register_names("train.optimizer", OPTIMIZERS)
config.register_names("train.lr_schedule", SCHEDULES)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """A fresh `train.optimizer` over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return lookup(OPTIMIZERS, "train.optimizer", cfg.optimizer)(params, cfg)


def lr_at(it: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at global iteration `it` of `total` (the schedule, then linear warm-up).

    Warm-up is open_lth's `it / w`: the first step (it = 0) runs at rate 0, so it moves no weight but does
    enter the optimizer's state (SGD's momentum buffer, Adam's moments and step count); full rate from it = w.
    """
    lr = cfg.lr * lookup(SCHEDULES, "train.lr_schedule", cfg.lr_schedule)(it, total)
    if cfg.warmup_iters and it < cfg.warmup_iters:
        lr *= it / cfg.warmup_iters
    return lr
