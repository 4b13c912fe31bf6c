"""The science engine: ticket searches (IMP, pruning at initialisation) on any task, run on workers.

Floors, lowest first (an import only goes down; tests/test_architecture.py checks it): config, typed,
paths, seeds -> models -> tasks -> pruning -> training -> io -> lottery -> trial, trainable. Never imports
search, mlflow or optuna.

Importing the package loads every registry that declares valid names (models, task families, scorers,
controls, optimizers and schedules, devices), so `config.Ticket.from_flat` knows them all, whichever
module a caller imports first.
"""

from trainables.models import registry as _models
from trainables.pruning import controls as _controls
from trainables.pruning import scorers as _scorers
from trainables.tasks import registry as _tasks
from trainables.training import device as _device
from trainables.training import optim as _optim

__all__: list[str] = []
REGISTRIES = (_models, _tasks, _scorers, _controls, _optim, _device)  # what feeds the config's valid names
