"""Sweep files: one TOML file describes one sweep, read into the frozen `Sweep` with every path resolved.

A sweep file holds a `name`, the `[base]` ticket, the `[space]` (see search/space.py), and the sections
`[objective]`, `[search]`, `[scheduler]`, `[budget]`, `[resources]` and `[storage]`; sweeps/digits.toml
shows every entry. `--set key=value` overrides a ticket key (fixing it: it leaves the space) or a sweep
entry addressed as `section.field`; `smoke=True` shrinks any sweep to a one-minute run. Every mistake is a
one-line `ConfigError` naming the entry. Trials run with their cwd in a Ray trial folder, so every path
here is made absolute against `cwd`.

Example:
    >>> s = load_sweep("sweeps/digits.toml", ["budget.num_samples=4", "prune.rate=0.3"])
    >>> s.num_samples, s.base.prune.rate, "prune.rate" in [d.key for d in s.space]
    (4, 0.3, False)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.overrides import parse_sets, read_toml
from search.space import Dim, clip_space, finite, parse_space, upper
from trainables.config import KEYS, ConfigError, Ticket, from_nested

__all__ = ["OBJECTIVES", "SAMPLERS", "SCHEDULERS", "Dim", "Sweep", "dump_toml", "load_sweep",
           "sweep_from_dict"]

OBJECTIVES = ("accuracy_at_density", "pareto")
SAMPLERS = ("tpe", "random", "gp", "nsga2")
SCHEDULERS = ("asha", "none")
PARETO_SAMPLERS = ("tpe", "nsga2", "random")  # GP is single-objective here; NSGA-II only for pareto
IMP_LEVELS_UNTIL_TARGET = 1000  # the config's maximum: IMP then stops at the target density, not the cap
SMOKE_CAPS = {"train.epochs": 2, "prune.levels": 2, "prune.iterations": 10}
SMOKE_DATA = {"mnist": ("1x28x28", 10), "fashion_mnist": ("1x28x28", 10), "cifar10": ("3x32x32", 10),
              "cifar100": ("3x32x32", 100), "svhn": ("3x32x32", 10)}  # name -> synthetic shape, classes
SMOKE_SIZE = 512
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # s3://, runs:/, postgresql+psycopg2://

# section -> {field in the file: Sweep attribute}
ENTRIES: dict[str, dict[str, str]] = {
    "objective": {"name": "objective", "target_density": "target_density"},
    "search": {"sampler": "sampler", "seed": "seed"},
    "scheduler": {"name": "scheduler", "grace_period": "grace_period",
                  "reduction_factor": "reduction_factor", "max_t": "max_t"},
    "budget": {"num_samples": "num_samples", "max_concurrent": "max_concurrent",
               "time_limit_s": "time_limit_s"},
    "resources": {"cpu": "cpu", "gpu": "gpu"},
    "storage": {f: f for f in ("root", "tracking_uri", "artifact_root", "optuna_storage", "ray_storage",
                               "ray_address")},
}
TOP_LEVEL = ("name", "smoke", "base", "space", *ENTRIES)
STORAGE_DEFAULTS = {"root": "runs", "tracking_uri": "", "artifact_root": "", "optuna_storage": "",
                    "ray_storage": "", "ray_address": ""}


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """One sweep, validated; storage entries are resolved (absolute paths, full URIs)."""

    name: str
    base: Ticket
    space: tuple[Dim, ...]
    objective: str = "accuracy_at_density"
    target_density: float | None = None
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
    smoke: bool = False

    @property
    def metrics(self) -> list[str]:
        return ["val_score", "sparsity"] if self.objective == "pareto" else ["val_score"]

    @property
    def modes(self) -> list[str]:
        return ["max"] * len(self.metrics)

    def to_toml_dict(self) -> dict[str, Any]:
        """A sweep-file document (TOML types only) that reads back to an equal Sweep (for resume)."""
        doc: dict[str, Any] = {"name": self.name}
        if self.smoke:
            doc["smoke"] = True
        doc["base"] = {k: list(v) if isinstance(v, tuple) else v
                       for k, v in self.base.flat().items() if v is not None}
        doc["space"] = {dim.key: dim.to_toml() for dim in self.space}
        for section, entries in ENTRIES.items():
            doc[section] = {f: getattr(self, a) for f, a in entries.items() if getattr(self, a) is not None}
        if self.max_t == _derived_max_t(self.base, self.space):
            doc["scheduler"]["max_t"] = 0.0  # keep it derived if the ticket is changed on resume
        return doc


_TYPES = typing.get_type_hints(Sweep)
_DEFAULTS: dict[str, Any] = {**{f.name: f.default for f in dataclasses.fields(Sweep)
                                if f.default is not dataclasses.MISSING}, **STORAGE_DEFAULTS}


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
        message = f"{source}: {e}".replace("\r", "\\r").replace("\n", "\\n")
        raise ConfigError(message) from e


def _build(doc: Any, sets: dict[str, str], smoke: bool, cwd: Path) -> Sweep:
    if not isinstance(doc, dict):
        raise ConfigError("expected a table of sections")
    _known("unknown section", list(doc), TOP_LEVEL, "valid sections")
    top, base_flat, space, sections, fixed = _read(doc)
    _apply_sets(sets, top, base_flat, sections, fixed)
    name = _retype("name", top.get("name"), str)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"name: {name!r} must be 1-128 letters, digits, - _ . (starting with a letter "
                          "or digit); it names the MLflow experiment and the Ray run")
    smoke = smoke or _retype("smoke", top.get("smoke", False), bool)
    f = _fields(sections)
    _check_fields(f)
    base = _base(base_flat, f, cwd)
    dims = parse_space(space, base, skip=fixed)
    if f["objective"] == "accuracy_at_density" and any(d.key == "prune.target_density" for d in dims):
        raise ConfigError('[space] "prune.target_density": accuracy_at_density fixes it to [objective] '
                          "target_density; search it with objective pareto")
    if smoke:
        base, dims = _smoke(base, dims, f)
    f["max_t"] = f["max_t"] or _derived_max_t(base, dims)
    if f["scheduler"] == "asha" and f["grace_period"] > f["max_t"]:
        raise ConfigError(f"[scheduler] grace_period {f['grace_period']} exceeds max_t {f['max_t']:g}")
    f.update(_storage(f, name, cwd))
    return Sweep(name=name, base=base, space=dims, smoke=smoke, **f)


def _known(what: str, names: list[str], valid: tuple[str, ...] | list[str], label: str) -> None:
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{what} {json.dumps(name)}{hint}; {label}: {', '.join(valid)}")


def _table(doc: dict[str, Any], section: str) -> dict[str, Any]:
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    return dict(table)


def _read(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                        dict[str, dict[str, Any]], set[str]]:
    """The document's parts, copied so --set can change them."""
    top = {k: doc[k] for k in ("name", "smoke") if k in doc}
    sections = {s: _table(doc, s) for s in ENTRIES}
    for s, table in sections.items():
        _known(f"[{s}] unknown field", list(table), list(ENTRIES[s]), "valid fields")
    return top, from_nested(_table(doc, "base")), _table(doc, "space"), sections, set()


def _apply_sets(sets: dict[str, str], top: dict[str, Any], base_flat: dict[str, Any],
                sections: dict[str, dict[str, Any]], fixed: set[str]) -> None:
    """A ticket key goes to the base and leaves the space; `section.field` to that entry."""
    entries = [f"{s}.{f}" for s, fs in ENTRIES.items() for f in fs]
    for key, value in sets.items():
        ticket_key = key.removeprefix("base.")
        if ticket_key in KEYS:
            base_flat[ticket_key] = value
            fixed.add(ticket_key)
            if ticket_key == "prune.target_density":
                sections["objective"]["target_density"] = value  # the sweep's target follows it
        elif key in ("name", "smoke"):
            top[key] = value
        elif key in entries:
            section, field = key.split(".", 1)
            sections[section][field] = value
        else:
            _known("--set: unknown key", [key], ["name", "smoke", *entries, *KEYS], "valid keys")


def _retype(entry: str, raw: Any, tp: Any) -> Any:
    """A sweep entry (from TOML or a --set string) as its field's type."""
    if tp == float | None:
        none = raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none"))
        return None if none else _retype(entry, raw, float)
    value: Any = None
    if isinstance(raw, str) and tp is not str:
        text = raw.strip().lower()
        value = {"true": True, "false": False}.get(text) if tp is bool else _parse_number(text, tp)
    elif tp is bool or isinstance(raw, bool):
        value = raw if tp is bool and isinstance(raw, bool) else None
    elif tp is str:
        value = raw if isinstance(raw, str) else None
    elif isinstance(raw, int | float) and finite(raw):
        value = tp(raw) if tp is float or float(raw).is_integer() else None
    if value is None or (isinstance(value, float) and not finite(value)):
        kind = {str: "text", bool: "true/false", int: "an integer", float: "a finite number"}[tp]
        raise ConfigError(f"{entry}: cannot read {raw!r} as {kind}")
    return value


def _parse_number(text: str, tp: Any) -> Any:
    try:
        return tp(text)
    except ValueError:
        return None


def _fields(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {attr: _retype(f"[{s}] {field}", sections[s].get(field, _DEFAULTS[attr]), _TYPES[attr])
            for s, entries in ENTRIES.items() for field, attr in entries.items()}


def _check_fields(f: dict[str, Any]) -> None:
    _choice("[objective] name", f["objective"], OBJECTIVES)
    _choice("[search] sampler", f["sampler"], SAMPLERS)
    if f["objective"] == "pareto":
        _choice("[search] sampler", f["sampler"], PARETO_SAMPLERS, " for objective pareto")
    elif f["sampler"] == "nsga2":
        _choice("[search] sampler", "nsga2", ("tpe", "random", "gp"), " for one objective")
    _choice("[scheduler] name", f["scheduler"], SCHEDULERS)
    td = f["target_density"]
    _above("[objective] target_density", td if td is not None else 1.0, 0.0, at_most=1.0)
    _above("[search] seed", f["seed"], 0, or_equal=True, at_most=2**32 - 1)
    _above("[scheduler] grace_period", f["grace_period"], 0)
    _above("[scheduler] reduction_factor", f["reduction_factor"], 1.0)
    _above("[scheduler] max_t", f["max_t"], 0.0, or_equal=True)
    _above("[budget] num_samples", f["num_samples"], 0)
    _above("[budget] max_concurrent", f["max_concurrent"], 0)
    _above("[budget] time_limit_s", f["time_limit_s"], 0.0, or_equal=True)
    _above("[resources] cpu", f["cpu"], 0.0)
    _above("[resources] gpu", f["gpu"], 0.0, or_equal=True)
    if f["gpu"] > 1 and not float(f["gpu"]).is_integer():
        raise ConfigError(f"[resources] gpu: {f['gpu']:g} must be a whole number above 1 (Ray shares "
                          "only fractions of one GPU)")


def _choice(entry: str, value: str, choices: tuple[str, ...], context: str = "") -> None:
    if value not in choices:
        raise ConfigError(f"{entry}: unknown value '{value}'{context}; valid choices: {', '.join(choices)}")


def _above(entry: str, value: float, low: float, *, or_equal: bool = False,
           at_most: float | None = None) -> None:
    if value < low or (value == low and not or_equal) or (at_most is not None and value > at_most):
        bound = f"{'at least' if or_equal else 'above'} {low}"
        bound += f" and at most {at_most}" if at_most is not None else ""
        raise ConfigError(f"{entry}: {value!r} must be {bound}")


def _base(flat: dict[str, Any], f: dict[str, Any], cwd: Path) -> Ticket:
    """The base ticket: the file's keys, the sweep's target density, absolute paths."""
    base = _ticket(flat)
    td = f["target_density"] if f["target_density"] is not None else base.prune.target_density
    if td is not None and base.prune.target_density not in (None, td):
        raise ConfigError(f"[base] prune.target_density {base.prune.target_density:g} disagrees with "
                          f"[objective] target_density {td:g}; set only one")
    if td is None and f["objective"] == "accuracy_at_density":
        raise ConfigError("[objective] target_density: accuracy_at_density needs a density in (0, 1]")
    f["target_density"] = td
    updates: dict[str, Any] = {"prune.target_density": td, "data.root": _path(base.data.root, cwd)}
    if f["objective"] == "accuracy_at_density" and "prune.levels" not in flat:
        updates["prune.levels"] = IMP_LEVELS_UNTIL_TARGET
    if base.prune.init_mask and not _SCHEME.match(base.prune.init_mask):
        updates["prune.init_mask"] = _path(base.prune.init_mask, cwd)
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


def _smoke(base: Ticket, dims: tuple[Dim, ...], f: dict[str, Any]) -> tuple[Ticket, tuple[Dim, ...]]:
    """Shrink to a one-minute run: few short trials on small data; the level cap ends each trial."""
    dims, fixed = clip_space(dims, SMOKE_CAPS)
    updates: dict[str, Any] = {k: min(base.flat()[k], cap) for k, cap in SMOKE_CAPS.items()}
    may_init = base.prune.method == "init" or any(
        d.key == "prune.method" and "init" in d.choices for d in dims)
    if not may_init:  # init needs its target; IMP without one stops at the level cap
        updates["prune.target_density"] = None
    if base.data.name in SMOKE_DATA:  # no files needed: same shape and classes, synthetic
        shape, classes = SMOKE_DATA[base.data.name]
        updates.update({"data.name": "synthetic", "data.input_shape": shape, "data.num_classes": classes,
                        "data.size": SMOKE_SIZE})
    f.update(num_samples=min(f["num_samples"], 4), max_concurrent=min(f["max_concurrent"], 2),
             grace_period=1, max_t=0.0)
    return _ticket({**base.flat(), **updates, **fixed}), dims


def _derived_max_t(base: Ticket, dims: tuple[Dim, ...]) -> float:
    """ASHA's max_t in cumulative epochs: every level (dense level 0 included) at the most epochs."""
    return (upper(dims, base, "prune.levels") + 1) * upper(dims, base, "train.epochs")


def _storage(f: dict[str, Any], name: str, cwd: Path) -> dict[str, str]:
    if not f["root"].strip():
        raise ConfigError("[storage] root: must name a folder")
    root = _path(f["root"], cwd)
    tracking = _uri(f["tracking_uri"], cwd)
    if tracking and not _SCHEME.match(tracking) and tracking != "databricks":
        raise ConfigError(f"[storage] tracking_uri: {tracking!r} is not a URI; use "
                          "sqlite:///path/mlflow.db, http://host:5000 or postgresql://...")
    return {"root": root,
            "tracking_uri": tracking or f"sqlite:///{os.path.join(root, 'mlflow.db')}",
            "artifact_root": _location(f["artifact_root"], cwd) or os.path.join(root, "artifacts"),
            "optuna_storage": _location(_uri(f["optuna_storage"], cwd), cwd)
            or os.path.join(root, "optuna", f"{name}.journal"),
            "ray_storage": _location(f["ray_storage"], cwd) or os.path.join(root, "ray"),
            "ray_address": f["ray_address"].strip()}


def _path(path: str, cwd: Path) -> str:
    """Absolute and normalised, symlinks kept (a shared mount may be a link on every node)."""
    if "\0" in path:
        raise ConfigError(f"path {path!r} contains a NUL character")
    return os.path.abspath(os.path.join(cwd, os.path.expanduser(path)))


def _location(text: str, cwd: Path) -> str:
    """'' stays ''; a URI (s3://, file://) is kept; a plain path becomes absolute."""
    text = text.strip()
    return text if not text or _SCHEME.match(text) else _path(text, cwd)


def _uri(text: str, cwd: Path) -> str:
    """A relative sqlite:///path made absolute (trials and the driver have different cwds)."""
    text = text.strip()
    rest = text.removeprefix("sqlite:///")
    if rest != text and rest and not rest.startswith("/") and not rest.startswith(":memory:"):
        return f"sqlite:///{_path(rest, cwd)}"
    return text


def dump_toml(doc: dict[str, Any]) -> str:
    """TOML text for a `Sweep.to_toml_dict()` document (the stdlib reads TOML but cannot write it)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines += ["", f"[{_toml_key(section)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # repr of a float is valid TOML (1e-05, inf, nan)
    if isinstance(value, str):  # JSON strings are TOML basic strings, once DEL is escaped too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
