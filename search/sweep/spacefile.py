"""Reading a sweep file's `[space]` table into `Dim`s, every bound, choice and condition checked against
the base ticket, so a typo fails when the sweep loads, not in trial 17.

Entries are quoted dotted keys (`"prune.rate" = {...}`) or nested tables (`prune.rate = {...}`), in file
order. A list is shorthand for a categorical dim. A `when` may name keys searched above it or fixed in the
base. Values in `choices` and `when` are stored canonical: typed as the Ticket types them, list-valued keys
as comma text (Optuna choices must be scalars; `Ticket.from_flat` reads the text back).

Example:
    >>> from trainables.config import Ticket
    >>> parse_space({"prune.rate": {"type": "float", "low": 0.1, "high": 0.5}}, Ticket())[0].high
    0.5
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from search.sweep.space import Dim
from trainables.config import KEYS, Ticket, from_nested, key_type
from trainables.typed import ConfigError, finite

KINDS = ("float", "int", "categorical")
_FIELDS = {"float": ("type", "low", "high", "log", "step", "when"),
           "int": ("type", "low", "high", "log", "step", "when"),
           "categorical": ("type", "choices", "when")}


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


def searched_keys(table: Any, *, skip: Collection[str] = ()) -> set[str]:
    """The keys a `[space]` table searches (before any of its entries is checked)."""
    return {key for key, _ in _entries(table) if key not in skip} if isinstance(table, dict) else set()


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


def _range(spec: Mapping[str, Any], key: str, kind: str, base: Ticket,
           when: tuple[tuple[str, tuple[Any, ...]], ...]) -> Dim:
    tp = key_type(key)
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
    raw: Any = spec.get(name)
    number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if number and kind == "int" and (isinstance(raw, int) or (finite(raw) and raw.is_integer())):
        return int(raw)
    if number and kind == "float" and finite(raw):
        return float(raw)
    what = "an integer" if kind == "int" else "a finite number"
    raise ConfigError(f"{name}: expected {what}, got {raw!r}")


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
