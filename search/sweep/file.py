"""Sweep files: one TOML file describes one sweep, read into the frozen `Sweep` with every path resolved.

A sweep file holds a `name`, the `[base]` ticket, the `[space]` (spacefile.py) and the sections
`[objective]`, `[search]`, `[scheduler]`, `[budget]`, `[resources]` and `[storage]`; sweeps/digits.toml
shows every entry. `--set key=value` overrides a ticket key (fixing it: it leaves the space) or a sweep
entry addressed as `section.field`; `smoke=True` shrinks any sweep to a one-minute run. Every mistake is
a one-line `ConfigError` naming the entry. Trials run with their cwd in a Ray trial folder, so every
path is made absolute against `cwd` here.

Example:
    >>> s = load_sweep("sweeps/digits.toml", ["budget.num_samples=4", "prune.rate=0.3"])
    >>> s.num_samples, s.base.prune.rate, "prune.rate" in [d.key for d in s.space]
    (4, 0.3, False)
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.sweep import budget, objectives
from search.sweep.overrides import parse_sets, read_toml
from search.sweep.space import Dim
from search.sweep.spacefile import parse_space, searched_keys
from search.sweep.storage import DEFAULT_ROOT, SCHEME, absolute, resolve_storage
from search.tune.algorithms import SAMPLERS, SCHEDULERS
from trainables.config import KEYS, Ticket, from_nested
from trainables.typed import ConfigError, choice, coerce, did_you_mean, finite

__all__ = ["ENTRIES", "SWEEP_NAME", "TOP_LEVEL", "Sweep", "load_sweep", "sweep_from_dict"]

SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# Every sweep entry, as a --set key ("section.field", or top-level), -> Sweep attribute.
ENTRIES: dict[str, str] = {
    "name": "name", "smoke": "smoke",
    "objective.name": "objective", "objective.target_density": "target_density",
    "objective.max_instability": "max_instability",
    "search.sampler": "sampler", "search.seed": "seed",
    "scheduler.name": "scheduler", **{f"scheduler.{a}": a for a in ("grace_period", "reduction_factor",
                                                                    "max_t")},
    **{f"budget.{a}": a for a in ("num_samples", "max_concurrent", "time_limit_s")},
    "resources.cpu": "cpu", "resources.gpu": "gpu",
    **{f"storage.{a}": a for a in ("root", "tracking_uri", "artifact_root", "optuna_storage",
                                   "ray_storage", "ray_address", "stages")},
}
SECTIONS = ("objective", "search", "scheduler", "budget", "resources", "storage")
TOP_LEVEL = ("name", "smoke", "base", "space", *SECTIONS)
# attribute -> (lowest, lowest allowed?, highest)
_LIMITS = {"target_density": (0.0, False, 1.0), "max_instability": (0.0, True, None),
           "seed": (0, True, 2**32 - 1), "grace_period": (0, False, None),
           "reduction_factor": (1.0, False, None), "max_t": (0.0, True, None),
           "num_samples": (0, False, None), "max_concurrent": (0, False, None),
           "time_limit_s": (0.0, True, None), "cpu": (0.0, False, None), "gpu": (0.0, True, None)}


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """One sweep, validated; storage entries are resolved (absolute paths, full URIs). Build it with
    `load_sweep` or `sweep_from_dict` (keyword-only fields: no positional construction)."""

    name: str
    base: Ticket
    space: tuple[Dim, ...]
    objective: str = objectives.DEFAULT
    target_density: float | None = None
    max_instability: float | None = None  # a constraint: only tickets this stable count (prune.instability)
    sampler: str = "tpe"
    seed: int = 0
    scheduler: str = "asha"
    grace_period: int = 2  # epochs; the time attribute is cumulative epochs over all levels
    reduction_factor: float = 3.0
    max_t: float = 0.0
    num_samples: int = 16
    max_concurrent: int = 2
    time_limit_s: float = 0.0  # 0 = none
    cpu: float = 1.0
    gpu: float = 0.0
    root: str
    tracking_uri: str  # MLflow
    artifact_root: str  # used only when the sweep creates the MLflow experiment
    optuna_storage: str  # a journal file path, or a SQLAlchemy URL when it has a scheme
    ray_storage: str
    ray_address: str  # "" = start a local Ray
    stages: str  # the stage store's folder (trainables/staged.py), or "off"
    smoke: bool = False

    @property
    def metrics(self) -> list[str]:
        """What Optuna optimises (the objective's Ray result names)."""
        return list(objectives.get(self.objective).metrics)

    @property
    def modes(self) -> list[str]:
        return list(objectives.get(self.objective).modes)

    def to_toml_dict(self) -> dict[str, Any]:
        """A sweep-file document (TOML types only) that reads back to an equal Sweep (for resume)."""
        doc: dict[str, Any] = {"name": self.name, **({"smoke": True} if self.smoke else {}),
                               "base": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in self.base.flat().items() if v is not None},
                               "space": {dim.key: dim.to_toml() for dim in self.space}}
        for entry, attr in ENTRIES.items():
            section, _, field = entry.rpartition(".")
            if section and getattr(self, attr) is not None:
                doc.setdefault(section, {})[field] = getattr(self, attr)
        if self.max_t == budget.derived_max_t(self.base, self.space):
            doc["scheduler"]["max_t"] = 0.0  # stays derived if the ticket changes on resume
        return doc


_TYPES = typing.get_type_hints(Sweep)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Sweep) if f.default is not dataclasses.MISSING}
_DEFAULTS.update(root=DEFAULT_ROOT, tracking_uri="", artifact_root="", optuna_storage="", ray_storage="",
                 ray_address="", stages="")


def load_sweep(path: str | Path, sets: list[str] | None = None, *, smoke: bool = False,
               cwd: Path | None = None) -> Sweep:
    """Read a sweep file; relative paths in it resolve against `cwd` (default: the current folder)."""
    return sweep_from_dict(read_toml(path), sets, smoke=smoke, cwd=cwd, source=f"sweep file {path}")


def sweep_from_dict(doc: dict[str, Any], sets: list[str] | None = None, *, smoke: bool = False,
                    cwd: Path | None = None, source: str = "sweep") -> Sweep:
    """A parsed sweep-file document plus `--set` pairs -> Sweep; mistakes raise a one-line ConfigError."""
    try:
        return _build(doc, parse_sets(sets), smoke, Path.cwd() if cwd is None else Path(cwd))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}".replace("\r", "\\r").replace("\n", "\\n")) from e


def _build(doc: Any, sets: dict[str, str], smoke: bool, cwd: Path) -> Sweep:
    raw, base_flat, space = _read(doc)
    fixed = _apply_sets(sets, raw, base_flat)
    if "name" not in raw:
        raise ConfigError("name: missing; a sweep needs a name (letters, digits, - _ .)")
    f = {attr: coerce(_label(entry), raw.get(entry, _DEFAULTS.get(attr)), _TYPES[attr], strict=True)
         for entry, attr in ENTRIES.items()}
    _check(f)
    base = _base(base_flat, f, cwd)
    objectives.get(f["objective"]).check(f["target_density"], searched_keys(space, skip=fixed))
    _check_stability(f["max_instability"], base, searched_keys(space, skip=fixed))
    dims = parse_space(space, base, skip=fixed)
    f["smoke"] = f["smoke"] or smoke
    if f["smoke"]:  # its level cap ends each trial short of the target on purpose
        updates, dims = budget.smoke(base, dims)
        base = _ticket({**base.flat(), **updates})
        f.update(budget.smoke_entries(f))
    else:
        budget.check_levels_reach(base, dims)
    f["max_t"] = f["max_t"] or budget.derived_max_t(base, dims)
    if f["scheduler"] == "asha" and f["grace_period"] > f["max_t"]:
        raise ConfigError(f"[scheduler] grace_period {f['grace_period']} exceeds max_t {f['max_t']:g}")
    f.update(resolve_storage(f, cwd))  # uses f["name"] for the journal file
    return Sweep(base=base, space=dims, **f)


def _label(entry: str) -> str:
    section, _, field = entry.rpartition(".")
    return f"[{section}] {field}" if section else entry


def _unknown(what: str, name: Any, valid: list[str]) -> ConfigError:
    hint = did_you_mean(str(name), valid)
    return ConfigError(f"{what} {json.dumps(name)}{hint}; valid {what.split()[-1]}s: {', '.join(valid)}")


def _read(doc: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The document as {entry: value}, the base as flat keys, and the space table (all copies)."""
    if not isinstance(doc, dict):
        raise ConfigError("expected a table of sections")
    raw = {k: doc[k] for k in ("name", "smoke") if k in doc}
    tables = {}
    for section, table in doc.items():
        if section not in TOP_LEVEL:
            raise _unknown("unknown section", section, list(TOP_LEVEL))
        if section in ("name", "smoke"):
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        tables[section] = table
    for section in SECTIONS:
        for field, value in tables.get(section, {}).items():
            if f"{section}.{field}" not in ENTRIES:
                fields = [e.split(".")[1] for e in ENTRIES if e.startswith(f"{section}.")]
                raise _unknown(f"[{section}] unknown field", field, fields)
            raw[f"{section}.{field}"] = value
    return raw, from_nested(tables.get("base", {})), dict(tables.get("space", {}))


def _apply_sets(sets: dict[str, str], raw: dict[str, Any], base_flat: dict[str, Any]) -> set[str]:
    """A ticket key goes to the base and leaves the space (returned); a sweep entry replaces the entry."""
    fixed = set()
    for key, value in sets.items():
        ticket_key = key.removeprefix("base.")
        if ticket_key in KEYS:
            base_flat[ticket_key] = value
            fixed.add(ticket_key)
            if ticket_key == "prune.target_density":
                raw["objective.target_density"] = value  # the sweep's target follows it
        elif key in ENTRIES:
            raw[key] = value
        else:
            raise _unknown("--set: unknown key", key, [*ENTRIES, *KEYS])
    return fixed


def _check(f: dict[str, Any]) -> None:
    if not SWEEP_NAME.fullmatch(f["name"]):
        raise ConfigError(f"name: {f['name']!r} must be 1-128 letters, digits, - _ . (starting with a "
                          "letter or digit); it names the MLflow experiment and the Ray run")
    objective = objectives.get(f["objective"])
    choice("[search] sampler", f["sampler"], SAMPLERS)
    choice("[search] sampler", f["sampler"], objective.samplers, f" for {objective.described}")
    choice("[scheduler] name", f["scheduler"], SCHEDULERS)
    for attr, (low, low_ok, high) in _LIMITS.items():
        value = f[attr]
        if value is not None and (value < low or (value == low and not low_ok)
                                  or (high is not None and value > high)):
            bound = f"{'at least' if low_ok else 'above'} {low}" + (f" and at most {high}" if high else "")
            entry = next(e for e, a in ENTRIES.items() if a == attr)
            raise ConfigError(f"{_label(entry)}: {value!r} must be {bound}")
    if f["gpu"] > 1 and not float(f["gpu"]).is_integer():
        raise ConfigError(f"[resources] gpu: {f['gpu']:g} must be a whole number above 1 (Ray shares "
                          "only fractions of one GPU)")


def _check_stability(bound: float | None, base: Ticket, searched: Collection[str]) -> None:
    """`[objective] max_instability` constrains what every trial measures: prune.instability, fixed on."""
    if bound is None:
        return
    if "prune.instability" in searched or not base.prune.instability:
        raise ConfigError("[objective] max_instability: needs [base] prune.instability = true (every trial "
                          "measures its tickets' instability), not searched")


def _base(flat: dict[str, Any], f: dict[str, Any], cwd: Path) -> Ticket:
    """The base ticket: the file's keys, the sweep's target density, absolute paths."""
    td = f["target_density"]
    base = _ticket(flat if td is None else {"prune.target_density": td, **flat})
    if td is not None and base.prune.target_density != td:
        raise ConfigError(f"[base] prune.target_density {base.prune.target_density:g} disagrees with "
                          f"[objective] target_density {td:g}; set only one")
    f["target_density"] = base.prune.target_density
    # prune.levels left unset stays unset: each trial derives its levels from its own rate and target
    updates: dict[str, Any] = {"data.root": absolute(base.data.root, cwd, "[base] data.root")}
    if base.prune.init_mask and not SCHEME.match(base.prune.init_mask):
        updates["prune.init_mask"] = absolute(base.prune.init_mask, cwd, "[base] prune.init_mask")
    return _ticket({**base.flat(), **updates})


def _ticket(flat: dict[str, Any]) -> Ticket:
    try:
        ticket = Ticket.from_flat(flat)
    except ConfigError as e:
        raise ConfigError(f"[base] {e}") from e
    for key, value in ticket.flat().items():
        if isinstance(value, float) and not finite(value):
            raise ConfigError(f"[base] {key}: {value!r} is not a finite number")
    return ticket
