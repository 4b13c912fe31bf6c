"""The science engine: ticket searches (IMP, pruning at initialisation) on any task, run on workers.

Floors, lowest first (an import only goes down; tests/test_architecture.py checks it): config, typed,
paths, seeds -> models -> tasks -> pruning -> training -> io -> lottery, staged -> trial, trainable. Never imports
search, mlflow or optuna.

The registries that declare valid names (models, task families, scorers, controls, optimizers and
schedules, devices) load on the config's first need for them (`config.Ticket.from_flat`, `choices`,
`help_text`), whichever module a caller imports first; importing the package alone imports no torch, so a
command line that only parses its arguments starts in a fraction of a second.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from trainables import config as _config

__all__: list[str] = []


def load_registries() -> tuple[ModuleType, ...]:
    """Every registry that feeds the config's valid names, imported (each registers itself on import)."""
    from trainables.models import registry as models
    from trainables.pruning import controls, scorers
    from trainables.tasks import registry as tasks
    from trainables.training import device, optim

    return (models, tasks, scorers, controls, optim, device)


_config.LOADERS.append(load_registries)


def __getattr__(name: str) -> Any:
    if name == "REGISTRIES":  # what feeds the config's valid names
        return load_registries()
    raise AttributeError(name)
