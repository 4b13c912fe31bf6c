"""Which device trains a ticket: the `train.device` registry (auto, cpu, cuda)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainables import config
from trainables.typed import ConfigError, lookup


def _auto() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        others = ", ".join(n for n in DEVICES if n != "cuda")
        raise ConfigError(f"train.device: cuda was asked for but no GPU is visible; valid choices: {others}")
    return torch.device("cuda")


DEVICES: dict[str, Callable[[], torch.device]] = {"auto": _auto, "cpu": lambda: torch.device("cpu"), "cuda": _cuda}
config.register_names("train.device", DEVICES)


def resolve_device(name: str) -> torch.device:
    """The torch device `train.device` names (ConfigError when it names a GPU that is not there)."""
    return lookup(DEVICES, "train.device", name)()
