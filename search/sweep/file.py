"""Sweep files: one TOML file describes one sweep, read into the frozen `Sweep` with every path resolved.

A sweep file holds a `name`, the `[base]` ticket, the `[space]` (search/spacefile.py) and the sections
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
import difflib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.sweep.overrides import parse_sets, read_toml
from search.sweep.space import Dim, clip_space, lower, upper, values
from search.sweep.spacefile import finite, parse_space
from search.sweep.storage import SCHEME, absolute, dump_toml, resolve_storage
from trainables.config import KEYS, LEVELS_WITHOUT_TARGET, MAX_LEVELS, ConfigError, Ticket, from_nested
from trainables.pruning import schedule

__all__ = ["OBJECTIVES", "SAMPLERS", "SCHEDULERS", "Dim", "Sweep", "dump_toml", "load_sweep",
           "sweep_from_dict"]

OBJECTIVES = ("accuracy_at_density", "pareto")
SAMPLERS = ("tpe", "random", "gp", "nsga2")
SCHEDULERS = ("asha", "none")
PARETO_SAMPLERS = ("tpe", "nsga2", "random")  # GP is single-objective here; NSGA-II only for pareto
SMOKE_CAPS = {"train.epochs": 2, "prune.levels": 2, "prune.iterations": 10,
              "prune.rewind_iter": 4}  # a rewind point must stay inside 2 epochs of small data
SMOKE_DATA = {"mnist": ("1x28x28", 10), "fashion_mnist": ("1x28x28", 10), "cifar10": ("3x32x32", 10),
              "cifar100": ("3x32x32", 100), "svhn": ("3x32x32", 10)}  # -> synthetic shape, classes
SMOKE_SIZE = 512
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

# Every sweep entry, as a --set key ("section.field", or top-level), -> Sweep attribute.
ENTRIES: dict[str, str] = {
    "name": "name", "smoke": "smoke",
    "objective.name": "objective", "objective.target_density": "target_density",
    "search.sampler": "sampler", "search.seed": "seed",
    "scheduler.name": "scheduler", **{f"scheduler.{a}": a for a in ("grace_period", "reduction_factor",
                                                                    "max_t")},
    **{f"budget.{a}": a for a in ("num_samples", "max_concurrent", "time_limit_s")},
    "resources.cpu": "cpu", "resources.gpu": "gpu",
    **{f"storage.{a}": a for a in ("root", "tracking_uri", "artifact_root", "optuna_storage",
                                   "ray_storage", "ray_address")},
}
SECTIONS = ("objective", "search", "scheduler", "budget", "resources", "storage")
TOP_LEVEL = ("name", "smoke", "base", "space", *SECTIONS)
# attribute -> (lowest, lowest allowed?, highest)
_LIMITS = {"target_density": (0.0, False, 1.0), "seed": (0, True, 2**32 - 1), "grace_period": (0, False, None),
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
        doc: dict[str, Any] = {"name": self.name, **({"smoke": True} if self.smoke else {}),
                               "base": {k: list(v) if isinstance(v, tuple) else v
                                        for k, v in self.base.flat().items() if v is not None},
                               "space": {dim.key: dim.to_toml() for dim in self.space}}
        for entry, attr in ENTRIES.items():
            section, _, field = entry.rpartition(".")
            if section and getattr(self, attr) is not None:
                doc.setdefault(section, {})[field] = getattr(self, attr)
        if self.max_t == _derived_max_t(self.base, self.space):
            doc["scheduler"]["max_t"] = 0.0  # stays derived if the ticket changes on resume
        return doc


_TYPES = typing.get_type_hints(Sweep)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Sweep) if f.default is not dataclasses.MISSING}
_DEFAULTS.update(root="runs", tracking_uri="", artifact_root="", optuna_storage="", ray_storage="",
                 ray_address="")


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
    f = {attr: _retype(_label(entry), raw.get(entry, _DEFAULTS.get(attr)), _TYPES[attr])
         for entry, attr in ENTRIES.items()}
    _check(f)
    base = _base(base_flat, f, cwd)
    dims = parse_space(space, base, skip=fixed)
    if f["objective"] == "accuracy_at_density" and any(d.key == "prune.target_density" for d in dims):
        raise ConfigError('[space] "prune.target_density": accuracy_at_density fixes it to [objective] '
                          "target_density; search it with objective pareto")
    f["smoke"] = f["smoke"] or smoke
    if f["smoke"]:  # its level cap ends each trial short of the target on purpose
        base, dims = _smoke(base, dims, f)
    else:
        _check_levels_reach(base, dims)
    f["max_t"] = f["max_t"] or _derived_max_t(base, dims)
    if f["scheduler"] == "asha" and f["grace_period"] > f["max_t"]:
        raise ConfigError(f"[scheduler] grace_period {f['grace_period']} exceeds max_t {f['max_t']:g}")
    f.update(resolve_storage(f, cwd))  # uses f["name"] for the journal file
    return Sweep(base=base, space=dims, **f)


def _label(entry: str) -> str:
    section, _, field = entry.rpartition(".")
    return f"[{section}] {field}" if section else entry


def _unknown(what: str, name: Any, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
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


def _retype(entry: str, raw: Any, tp: Any) -> Any:
    """A sweep entry from TOML or a --set string as its field's type."""
    if tp == float | None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none")):
            return None
        tp = float
    value = raw
    if isinstance(raw, str) and tp is not str:
        value = {"true": True, "false": False}.get(raw.strip().lower()) if tp is bool else _parse(raw, tp)
    elif tp in (int, float) and isinstance(raw, int | float) and not isinstance(raw, bool) and finite(raw):
        value = tp(raw) if tp is float or float(raw).is_integer() else None
    if type(value) is not tp or (tp is float and not finite(value)):
        kind = {str: "text", bool: "true/false", int: "an integer", float: "a finite number"}[tp]
        raise ConfigError(f"{entry}: cannot read {raw!r} as {kind}")
    return value


def _parse(text: str, tp: Any) -> Any:
    try:
        return tp(text.strip())
    except ValueError:
        return None


def _check(f: dict[str, Any]) -> None:
    if not SWEEP_NAME.fullmatch(f["name"]):
        raise ConfigError(f"name: {f['name']!r} must be 1-128 letters, digits, - _ . (starting with a "
                          "letter or digit); it names the MLflow experiment and the Ray run")
    _choice("[objective] name", f["objective"], OBJECTIVES)
    _choice("[search] sampler", f["sampler"], SAMPLERS)
    if f["objective"] == "pareto":
        _choice("[search] sampler", f["sampler"], PARETO_SAMPLERS, " for objective pareto")
    elif f["sampler"] == "nsga2":
        _choice("[search] sampler", "nsga2", ("tpe", "random", "gp"), " for one objective")
    _choice("[scheduler] name", f["scheduler"], SCHEDULERS)
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


def _choice(entry: str, value: str, choices: tuple[str, ...], context: str = "") -> None:
    if value not in choices:
        raise ConfigError(f"{entry}: unknown value '{value}'{context}; valid choices: {', '.join(choices)}")


def _base(flat: dict[str, Any], f: dict[str, Any], cwd: Path) -> Ticket:
    """The base ticket: the file's keys, the sweep's target density, absolute paths."""
    td = f["target_density"]
    base = _ticket(flat if td is None else {"prune.target_density": td, **flat})
    if td is not None and base.prune.target_density != td:
        raise ConfigError(f"[base] prune.target_density {base.prune.target_density:g} disagrees with "
                          f"[objective] target_density {td:g}; set only one")
    f["target_density"] = td = base.prune.target_density
    if td is None and f["objective"] == "accuracy_at_density":
        raise ConfigError("[objective] target_density: accuracy_at_density needs a density in (0, 1]")
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


def _smoke(base: Ticket, dims: tuple[Dim, ...], f: dict[str, Any]) -> tuple[Ticket, tuple[Dim, ...]]:
    """Shrink to a one-minute run: few short trials on small data; the level cap ends each trial."""
    dims, fixed = clip_space(dims, SMOKE_CAPS)
    updates: dict[str, Any] = {k: cap if base.flat()[k] is None else min(base.flat()[k], cap)
                               for k, cap in SMOKE_CAPS.items()}
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


def _check_levels_reach(base: Ticket, dims: tuple[Dim, ...]) -> None:
    """`prune.levels` fixed in [base] must reach the target at the lowest rate any trial samples. The
    pool's arithmetic alone is a floor for every model (the output layer can only need more levels)."""
    p = base.prune
    targets = values(dims, base, "prune.target_density")
    if p.levels is None or not targets or any(d.key == "prune.levels" for d in dims):
        return
    target, rate = min(targets), lower(dims, base, "prune.rate")
    lowest = dataclasses.replace(p, method="imp", rate=rate, target_density=target)
    try:
        schedule.require_reach(lowest, schedule.levels_to_reach(target, rate))
    except ConfigError as e:
        raise ConfigError(f"[base] {e}") from e


def _derived_max_t(base: Ticket, dims: tuple[Dim, ...]) -> float:
    """ASHA's max_t in cumulative epochs: every level (dense level 0 included) at the most epochs. Unset
    levels follow each trial's rate, so they count as many as the lowest rate, target and output rate of
    any trial need whatever the model (schedule.levels_bound); ASHA stops a trial that reaches max_t."""
    levels = values(dims, base, "prune.levels")  # given ones: the base's and a searched range
    if base.prune.levels is None:
        targets = values(dims, base, "prune.target_density")
        bound = schedule.levels_bound(min(targets), lower(dims, base, "prune.rate"),
                                      lower(dims, base, "prune.output_rate")) if targets else LEVELS_WITHOUT_TARGET
        levels.append(MAX_LEVELS if bound is None else bound)
    return (max(levels) + 1) * upper(dims, base, "train.epochs")
