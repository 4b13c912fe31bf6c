"""The sweep's Optuna study in Optuna's own dashboard: optuna-dashboard on the sweep's storage, on 127.0.0.1.

The storage is the one the sweep recorded (`<root>/sweeps/<name>.json`): its journal file by default, or an RDB
URL (PostgreSQL, sqlite). The dashboard only reads the study, so it may run while the sweep's driver writes it.
It binds to the loopback address only: the dashboard has no authentication, and it can edit trial notes.

Example:
    ticket-search dashboard digits            # then open http://127.0.0.1:8080
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.sweep.record import load_record
from trainables.typed import ConfigError

HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # optuna-dashboard's own default


def study_storage(name: str, root: str | Path) -> str:
    """The Optuna storage (journal path or RDB URL) the sweep `name` under `root` recorded."""
    return load_record(name, root, verb="dashboard").optuna_storage


def open_storage(url_or_path: str) -> Any:
    """The storage, read-only in spirit: a journal file that does not exist is a mistake, not a new study."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" in url_or_path:
        return optuna.storages.RDBStorage(url_or_path, skip_table_creation=True)
    if not Path(url_or_path).is_file():
        raise ConfigError(f"dashboard: no Optuna journal at {url_or_path} (has the sweep started?)")
    return JournalStorage(JournalFileBackend(url_or_path))


def check_study(storage: Any, name: str) -> None:
    """The sweep's study must be in the storage (its name is the sweep's name)."""
    studies = sorted(s.study_name for s in storage.get_all_studies())
    if name not in studies:
        raise ConfigError(f"dashboard: no Optuna study '{name}' in the sweep's storage; studies: "
                          f"{', '.join(studies) or 'none'}")


def open_study_storage(name: str, root: str | Path) -> Any:
    """The storage holding the sweep `name`'s study, checked: every user mistake is raised here."""
    storage = open_storage(study_storage(name, root))
    check_study(storage, name)
    return storage


def serve(storage: Any, *, port: int = DEFAULT_PORT) -> None:
    """Serve the dashboard on 127.0.0.1:`port` until interrupted."""
    from optuna_dashboard import run_server

    if not 0 < port < 65536:
        raise ConfigError(f"--port: {port} is not a TCP port (1-65535)")
    run_server(storage, host=HOST, port=port)
