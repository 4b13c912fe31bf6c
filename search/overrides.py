"""Reading ticket descriptions from TOML files and `--set key=value` overrides into flat dotted keys."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from trainables.config import ConfigError, Ticket, from_nested


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """`["prune.rate=0.5", "a.b=c,d"]` -> {"prune.rate": "0.5", "a.b": "c,d"} (values re-typed later)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got '{pair}'")
        out[key.strip()] = value.strip()
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e


def load_ticket(path: str | Path | None, sets: list[str] | None) -> Ticket:
    """A ticket from an optional TOML file (sections or dotted keys) plus `--set` overrides."""
    flat: dict[str, Any] = from_nested(read_toml(path)) if path else {}
    flat.update(parse_sets(sets))
    return Ticket.from_flat(flat)
