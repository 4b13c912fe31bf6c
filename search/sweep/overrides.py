"""Reading ticket descriptions from TOML files and `--set key=value` overrides into flat dotted keys."""

from __future__ import annotations

import tomllib
import unicodedata
from pathlib import Path
from typing import Any

from trainables.config import ConfigError, Ticket, from_nested


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """`["prune.rate=0.5", "a.b=c,d"]` -> {"prune.rate": "0.5", "a.b": "c,d"} (values re-typed later)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got {pair!r}")
        control = next((c for c in pair if unicodedata.category(c) == "Cc"), None)
        if control is not None:  # "1\x1f" must not pass as 1 because str.strip() removes \x1f
            raise ConfigError(f"--set {key.strip()!r}: control character {control!r} in {pair!r}")
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
    except UnicodeDecodeError as e:  # TOML is UTF-8; tomllib lets the decoder's error through
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: byte {e.start})") from e
    except OSError as e:  # unreadable: permissions, a vanished file
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from e


def load_ticket(path: str | Path | None, sets: list[str] | None) -> Ticket:
    """A ticket from an optional TOML file (sections or dotted keys) plus `--set` overrides."""
    flat: dict[str, Any] = from_nested(read_toml(path)) if path else {}
    flat.update(parse_sets(sets))
    return Ticket.from_flat(flat)
