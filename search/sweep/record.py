"""A sweep's resolved description on disk, `<root>/sweeps/<name>.json`: what `resume` and `dashboard` find by name.

Written once by the driver before trials start; read back without Ray, so a verb that only needs to know where
a sweep's stores are (`ticket-search dashboard`) starts quickly.
"""

from __future__ import annotations

import json
from pathlib import Path

from search.sweep.file import SWEEP_NAME, Sweep, sweep_from_dict
from search.sweep.storage import DEFAULT_ROOT, record_path
from trainables.io.maskio import write_atomically
from trainables.typed import ConfigError


def save_record(sweep: Sweep) -> None:
    """Record the resolved sweep for `resume`, atomically: a driver killed mid-write leaves the old record."""
    path = record_path(sweep.root, sweep.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(sweep.to_toml_dict(), indent=2, default=str).encode(), "sweep record")


def load_record(name: str, root: str | Path = DEFAULT_ROOT, *, verb: str = "resume") -> Sweep:
    """The sweep recorded under `root` by `name`; a name that is not there is a user mistake naming `verb`."""
    if not SWEEP_NAME.fullmatch(name):  # a name is a file name under <root>/sweeps: no '/', no '..'
        raise ConfigError(f"{verb}: {name!r} is not a sweep name (1-128 letters, digits, - _ ., starting with a "
                          "letter or digit)")
    path = record_path(Path(root).resolve(), name)
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        raise ConfigError(f"{verb}: no sweep named '{name}' under {path.parent}; known sweeps: "
                          f"{', '.join(known) or 'none'}")
    return sweep_from_dict(json.loads(path.read_text()), cwd=Path(root).resolve().parent)
