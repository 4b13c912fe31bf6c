"""Where a sweep's things go, and writing a sweep back to a file.

Storage entries resolve to absolute paths and full URIs before Ray starts (trials run with their cwd in
a Ray trial folder, and Ray wants an absolute storage path). Empty entries take the embedded defaults
under `[storage] root`: MLflow `sqlite:///<root>/mlflow.db` with `<root>/artifacts`, the Optuna journal
`<root>/optuna/<name>.journal`, Ray results in `<root>/ray` and the stage store of trained levels in
`<root>/stages` (`off` turns it off); the resolved sweep itself is recorded in
`<root>/sweeps/<name>.json` (what `resume` reads). `dump_toml` writes a
`Sweep.to_toml_dict()` document as TOML text, since the standard library reads TOML but cannot write it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from trainables import paths
from trainables.typed import ConfigError

DEFAULT_ROOT = "runs"  # [storage] root, and where the CLI looks for a store when told nothing
STAGES_OFF = "off"  # [storage] stages = "off": no stage reuse
MLFLOW_DB, ARTIFACTS_DIR, OPTUNA_DIR, RAY_DIR, SWEEPS_DIR = "mlflow.db", "artifacts", "optuna", "ray", "sweeps"
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # s3://, runs:/, postgresql+psycopg2://
USERINFO_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#]*:[^/@?#]*@")  # scheme://user:password@


def resolve_storage(entries: dict[str, Any], cwd: Path) -> dict[str, str]:
    """The `[storage]` entries resolved against `cwd` (and `name` for the journal file)."""
    if not entries["root"].strip():
        raise ConfigError("[storage] root: must name a folder")
    root = absolute(entries["root"], cwd, "[storage] root")
    tracking = _sqlite(entries["tracking_uri"], cwd, "[storage] tracking_uri")
    if tracking and not SCHEME.match(tracking) and tracking != "databricks":
        raise ConfigError(f"[storage] tracking_uri: {tracking!r} is not a URI; use "
                          "sqlite:///path/mlflow.db, http://host:5000 or postgresql://...")
    optuna = _sqlite(entries["optuna_storage"], cwd, "[storage] optuna_storage")
    _no_password(tracking, "[storage] tracking_uri", "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    _no_password(optuna, "[storage] optuna_storage", "PGPASSWORD or ~/.pgpass")
    return {"root": root,
            "tracking_uri": tracking or f"sqlite:///{os.path.join(root, MLFLOW_DB)}",
            "artifact_root": _location(entries["artifact_root"], cwd, "[storage] artifact_root")
            or os.path.join(root, ARTIFACTS_DIR),
            "optuna_storage": _location(optuna, cwd, "[storage] optuna_storage")
            or os.path.join(root, OPTUNA_DIR, f"{entries['name']}.journal"),
            "ray_storage": _location(entries["ray_storage"], cwd, "[storage] ray_storage")
            or os.path.join(root, RAY_DIR),
            "ray_address": entries["ray_address"].strip(),
            "stages": _stages(entries["stages"], root, cwd)}


def _stages(text: str, root: str, cwd: Path) -> str:
    """The stage store's folder: `<root>/stages` by default, "off" to train every trial's every level. It takes
    leases by atomic file creation, so it needs a file system every node mounts, not a bucket."""
    text = text.strip()
    if text.lower() == STAGES_OFF:
        return STAGES_OFF
    if SCHEME.match(text):
        raise ConfigError(f"[storage] stages: {text!r} is a URI; the stage store needs a folder (on a cluster, on "
                          "the shared disk every node mounts) or off")
    return absolute(text, cwd, "[storage] stages") if text else os.path.join(root, paths.STAGES_DIR)


def record_path(root: str | Path, name: str) -> Path:
    """Where a sweep's resolved description is kept for `resume`: `<root>/sweeps/<name>.json`."""
    return Path(root) / SWEEPS_DIR / f"{name}.json"


def _no_password(uri: str, entry: str, instead: str) -> None:
    """A password inside a URI would be written in plain text to the sweep record and Ray's experiment state,
    which every user of the shared disk can read: credentials come from the environment instead."""
    if USERINFO_PASSWORD.search(uri):
        raise ConfigError(f"{entry}: holds a password (user:password@); leave it out and set {instead} in the "
                          "environment of the driver and the workers")


def absolute(path: str, cwd: Path, entry: str) -> str:
    """Absolute and normalised, symlinks kept (a shared mount may be a link on every node)."""
    if "\0" in path:
        raise ConfigError(f"{entry}: {path!r} contains a NUL character")
    return os.path.abspath(os.path.join(cwd, os.path.expanduser(path)))


def _location(text: str, cwd: Path, entry: str) -> str:
    """'' stays ''; a URI (s3://, file://) is kept; a plain path becomes absolute."""
    text = text.strip()
    return text if not text or SCHEME.match(text) else absolute(text, cwd, entry)


def _sqlite(text: str, cwd: Path, entry: str) -> str:
    """A relative sqlite:///path made absolute; anything else unchanged."""
    text = text.strip()
    rest = text.removeprefix("sqlite:///")
    if rest != text and rest and not rest.startswith("/") and not rest.startswith(":memory:"):
        return f"sqlite:///{absolute(rest, cwd, entry)}"
    return text


def dump_toml(doc: dict[str, Any]) -> str:
    """TOML text for a `Sweep.to_toml_dict()` document: top-level values, then one table per section."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines += ["", f"[{_key(section)}]", *(f"{_key(k)} = {_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # a float's repr is valid TOML (1e-05, inf, nan)
    if isinstance(value, str):  # a JSON string is a TOML basic string once DEL is escaped too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
