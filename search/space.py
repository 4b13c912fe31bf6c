"""The search space of a sweep: `Dim`s read from a sweep file's `[space]`, checked against the base ticket,
and handed to Optuna as a define-by-run function plus a sampler.

A dim is a float/int range over one dotted Ticket key (optionally log-scaled or stepped) or a list of
choices. A dim with `when` is sampled only when every condition key's current value (sampled earlier in
this trial, else the base ticket's) is one of its allowed values, so `prune.rewind_iter` can exist only
for `prune.method = imp`.

Example:
    >>> import optuna
    >>> from search.sweepfile import load_sweep
    >>> sweep = load_sweep("sweeps/mnist1d.toml")
    >>> study = optuna.create_study(sampler=sampler(sweep), direction="maximize")
    >>> trial = study.ask()
    >>> define_by_run(sweep)(trial)
    >>> ticket = config_of(trial.params, sweep)
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import optuna

from trainables.config import KEYS, SECTIONS, ConfigError, Ticket, from_nested

if TYPE_CHECKING:
    from search.sweepfile import Sweep

KINDS = ("float", "int", "categorical")
_FIELDS = {"float": ("type", "low", "high", "log", "step", "when"),
           "int": ("type", "low", "high", "log", "step", "when"),
           "categorical": ("type", "choices", "when")}


@dataclass(frozen=True)
class Dim:
    """One searched key: a range (`kind` float or int) or `choices` (`kind` categorical).

    `when` = ((key, allowed values), ...); values are canonical (typed as the Ticket types them,
    list-valued keys as comma text, since Optuna choices must be scalars).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def holds(self, current: Mapping[str, Any]) -> bool:
        """Whether this dim is sampled, given the trial's current values of every key."""
        return all(current[key] in allowed for key, allowed in self.when)

    def to_toml(self) -> dict[str, Any]:
        """The inline table a sweep file would hold for this dim."""
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high)
            if self.log:
                out["log"] = True
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {key: list(allowed) for key, allowed in self.when}
        return out


# ---- reading [space] ---------------------------------------------------------------------------------

def parse_space(table: Any, base: Ticket, *, skip: Collection[str] = ()) -> tuple[Dim, ...]:
    """Dims in file order from a `[space]` table (quoted dotted keys or nested tables); keys in `skip`
    (fixed by `--set`) are left out. Every bound and choice is validated against `base`."""
    if not isinstance(table, dict):
        raise ConfigError("[space] must be a table of dotted keys")
    entries = [(key, spec) for key, spec in _entries(table) if key not in skip]
    keys = [key for key, _ in entries]
    dims: list[Dim] = []
    for key, spec in entries:
        try:
            if keys.count(key) > 1:
                raise ConfigError("given twice")
            dims.append(_dim(key, spec, base, dims, keys))
        except ConfigError as e:
            raise ConfigError(f"[space] {json.dumps(key)}: {e}") from e
    return tuple(dims)


def _entries(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, spec in table.items():
        key = f"{prefix}{name}"
        if isinstance(spec, dict) and "type" not in spec and key not in KEYS:
            yield from _entries(spec, f"{key}.")
        else:
            yield key, spec


def check_key(key: str) -> None:
    """Raise Ticket.from_flat's unknown-key message (it lists the valid keys) unless `key` is one."""
    if key not in KEYS:
        Ticket.from_flat({key: None})


def canonical(base: Ticket, key: str, raw: Any) -> Any:
    """`raw` typed and validated as `key` of `base`; list values as comma text (Optuna needs scalars)."""
    value = base.replace(**{key: raw}).flat()[key]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _dim(key: str, spec: Any, base: Ticket, earlier: list[Dim], keys: list[str]) -> Dim:
    check_key(key)
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError("expected {type = ...} or a list of choices; fixed values belong in [base]")
    kind = spec.get("type")
    if kind not in KINDS:
        got = "missing type" if kind is None else f"type: unknown value {kind!r}"
        raise ConfigError(f"{got}; valid choices: {', '.join(KINDS)}")
    unknown = [f for f in spec if f not in _FIELDS[kind]]
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r} for type {kind}; "
                          f"valid fields: {', '.join(_FIELDS[kind])}")
    when = _when(spec.get("when"), key, base, earlier, keys)
    if kind == "categorical":
        return Dim(key, kind, choices=_choices(spec.get("choices"), key, base), when=when)
    return _range(spec, key, kind, base, when)


def _choices(raw: Any, key: str, base: Ticket) -> tuple[Any, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("choices must be a non-empty list")
    out: list[Any] = []
    for choice in raw:
        try:
            value = canonical(base, key, choice)
        except ConfigError as e:
            raise ConfigError(f"choice {choice!r} is invalid ({e})") from e
        if value in out:
            raise ConfigError(f"choice {choice!r} is given twice")
        out.append(value)
    return tuple(out)


@functools.cache
def _key_type(key: str) -> Any:
    section, name = key.split(".", 1)
    tp = typing.get_type_hints(SECTIONS[section])[name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # `float | None`
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _range(spec: Mapping[str, Any], key: str, kind: str, base: Ticket,
           when: tuple[tuple[str, tuple[Any, ...]], ...]) -> Dim:
    tp = _key_type(key)
    if tp not in (int, float) or (kind == "float" and tp is int):
        need = "type = \"int\" or a list of choices" if tp is int else "a list of choices"
        raise ConfigError(f"a {kind} range needs a {'float' if kind == 'float' else 'numeric'} key; "
                          f"use {need}")
    low, high = _number(spec, "low", kind), _number(spec, "high", kind)
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"log: expected true or false, got {log!r}")
    if step is not None:
        step = _number(spec, "step", kind)
    _check_range(kind, low, high, log, step)
    for bound in (low, high):
        try:
            canonical(base, key, bound)
        except ConfigError as e:
            raise ConfigError(f"{kind} range exceeds the key's valid range ({e})") from e
    return Dim(key, kind, low=low, high=high, log=log, step=step, when=when)


def _number(spec: Mapping[str, Any], name: str, kind: str) -> Any:
    raw = spec.get(name)
    number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if number and kind == "int" and (isinstance(raw, int) or (finite(raw) and raw.is_integer())):
        return int(raw)
    if number and kind == "float" and finite(raw):
        return float(raw)
    what = "an integer" if kind == "int" else "a finite number"
    raise ConfigError(f"{name}: expected {what}, got {raw!r}")


def finite(value: float) -> bool:
    """math.isfinite that also says False for integers too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_range(kind: str, low: float, high: float, log: bool, step: float | None) -> None:
    if low >= high:
        raise ConfigError(f"low {low!r} must be below high {high!r}")
    if log and low <= 0:
        raise ConfigError(f"a log range needs low > 0, got {low!r}")
    if step is None:
        return
    if log:
        raise ConfigError("log and step cannot be combined")
    if step <= 0:
        raise ConfigError(f"step must be positive, got {step!r}")
    ratio = (high - low) / step
    if not finite(ratio) or abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio):
        raise ConfigError(f"high - low = {high - low!r} is not a multiple of step {step!r}")


def _when(raw: Any, key: str, base: Ticket, earlier: list[Dim],
          keys: list[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise ConfigError('when: expected a table like {"prune.method" = "imp"}')
    before = {d.key: d for d in earlier}
    conditions = []
    for cond, allowed in from_nested(raw).items():
        try:
            conditions.append((cond, _allowed(cond, allowed, key, base, before, keys)))
        except ConfigError as e:
            raise ConfigError(f"when {json.dumps(cond)}: {e}") from e
    return tuple(conditions)


def _allowed(cond: str, allowed: Any, key: str, base: Ticket, before: Mapping[str, Dim],
             keys: list[str]) -> tuple[Any, ...]:
    check_key(cond)
    if cond == key or (cond in keys and cond not in before):
        raise ConfigError(f"must be a key fixed in [base] or searched above {json.dumps(key)} in [space]")
    values = allowed if isinstance(allowed, list) else [allowed]
    if not values:
        raise ConfigError("needs at least one allowed value")
    out = []
    for value in values:
        try:
            out.append(canonical(base, cond, value))
        except ConfigError as e:
            raise ConfigError(f"value {value!r} is invalid ({e})") from e
        dim = before.get(cond)
        if dim is not None and dim.kind == "categorical" and out[-1] not in dim.choices:
            raise ConfigError(f"value {value!r} is not among its choices")
    return tuple(out)


# ---- smoke runs and budgets --------------------------------------------------------------------------

def clip_space(dims: tuple[Dim, ...], caps: Mapping[str, int]) -> tuple[tuple[Dim, ...], dict[str, Any]]:
    """Dims over capped keys clipped to the caps; a dim left with one value is dropped and returned as a
    fixed value for the base ticket."""
    kept: list[Dim] = []
    fixed: dict[str, Any] = {}
    for dim in dims:
        cap = caps.get(dim.key)
        if cap is None:
            kept.append(dim)
            continue
        if dim.kind == "categorical":
            new = replace(dim, choices=tuple(dict.fromkeys(_cap(c, cap) for c in dim.choices)))
            single = len(new.choices) == 1
            value = new.choices[0]
        else:
            low, high = min(_bound(dim.low), cap), min(_bound(dim.high), cap)
            if dim.step:  # keep high - low a multiple of the step
                high = low + math.floor((high - low) / dim.step) * dim.step
            new, single, value = replace(dim, low=low, high=high), low >= high, low
        if single:
            fixed[dim.key] = value
        else:
            kept.append(new)
    return tuple(kept), fixed


def _cap(value: Any, cap: int) -> Any:
    return min(value, cap) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _bound(value: float | None) -> float:
    if value is None:
        raise ValueError("a range dim without bounds")
    return value


def upper(dims: tuple[Dim, ...], base: Ticket, key: str) -> float:
    """The largest value `key` can take in any trial (base value or any dim's high or choice)."""
    values = [float(base.flat()[key])]
    for dim in dims:
        if dim.key == key:
            values += [float(c) for c in dim.choices] if dim.kind == "categorical" else [_bound(dim.high)]
    return max(values)


# ---- Optuna ------------------------------------------------------------------------------------------

def define_by_run(sweep: Sweep) -> Callable[[optuna.Trial], dict[str, Any] | None]:
    """A define-by-run space for `OptunaSearch`: suggests each dim in file order, skipping dims whose
    `when` does not hold, and returns None (the base ticket supplies every other key)."""
    dims = sweep.space
    base = {key: _scalar(value) for key, value in sweep.base.flat().items()}

    def space(trial: optuna.Trial) -> dict[str, Any] | None:
        current = dict(base)
        for dim in dims:
            if dim.holds(current):
                current[dim.key] = suggest(trial, dim)
        return None

    return space


def _scalar(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def suggest(trial: optuna.Trial, dim: Dim) -> Any:
    """One Optuna suggestion for `dim` (keyword arguments, as Optuna 5 wants)."""
    if dim.kind == "categorical":
        return trial.suggest_categorical(name=dim.key, choices=list(dim.choices))
    low, high = _bound(dim.low), _bound(dim.high)
    if dim.kind == "int":
        return trial.suggest_int(name=dim.key, low=int(low), high=int(high), step=int(dim.step or 1),
                                 log=dim.log)
    return trial.suggest_float(name=dim.key, low=low, high=high, step=dim.step, log=dim.log)


def _tpe(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if not any(dim.when for dim in sweep.space):
        return optuna.samplers.TPESampler(seed=sweep.seed)  # Optuna 5: multivariate, constant liar
    # Conditional spaces: group decomposition lets multivariate TPE model each branch (imp / init)
    # jointly instead of falling back to independent sampling for the conditional keys.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=sweep.seed, multivariate=True, group=True)


def _gp(sweep: Sweep) -> optuna.samplers.BaseSampler:
    from optuna.samplers import GPSampler  # needs torch and scipy when it samples

    return GPSampler(seed=sweep.seed)


def _nsga2(sweep: Sweep) -> optuna.samplers.BaseSampler:
    # Optuna's default population (50) exceeds small budgets, which would make NSGA-II pure random
    # search; a quarter of the budget gives a few generations.
    population = min(50, max(4, sweep.num_samples // 4))
    return optuna.samplers.NSGAIISampler(seed=sweep.seed, population_size=population)


SAMPLERS: dict[str, Callable[[Sweep], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": lambda sweep: optuna.samplers.RandomSampler(seed=sweep.seed),
    "gp": _gp,
    "nsga2": _nsga2,
}


def sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the sweep names, seeded with its seed."""
    if sweep.sampler not in SAMPLERS:
        raise ConfigError(f"[search] sampler: unknown value '{sweep.sampler}'; "
                          f"valid choices: {', '.join(SAMPLERS)}")
    return SAMPLERS[sweep.sampler](sweep)


def config_of(trial_params: Mapping[str, Any], sweep: Sweep) -> Ticket:
    """The ticket one trial searches: the base with the trial's sampled keys."""
    return sweep.base.replace(**trial_params)
