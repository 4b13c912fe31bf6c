"""Typed values from text, and the one-line user errors about them: `ConfigError`, choices, ranges, lookups.

Every value a user gives (TOML, `--set`, MLflow params, which come back as strings) is read by `coerce` into
its field's declared type; the ticket keys (trainables/config.py) and the sweep entries (search/sweep/file.py)
share it, so "true", "0.5" or "3,4" mean the same everywhere. A mistake is a `ConfigError` whose message is
one line naming the field; `choice`, `in_range`, `lookup` (a registry's loud `get`) and `did_you_mean`
write those lines, so each wording exists once. `from_nested` flattens TOML-style nesting into dotted keys.

Example:
    >>> coerce("model.widths", "300, 100", tuple[int, ...])
    (300, 100)
    >>> lookup({"sgd": 1, "adam": 2}, "train.optimizer", "adma")
    Traceback (most recent call last):
    trainables.typed.ConfigError: train.optimizer: unknown value 'adma'; valid choices: sgd, adam
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

V = TypeVar("V")
TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})
NONE = frozenset({"", "none", "null"})  # what an optional value reads as unset


class ConfigError(ValueError):
    """A user mistake in a ticket or sweep description; the message is one line naming the field."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest valid name, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choice(key: str, value: str, choices: Iterable[str], context: str = "") -> None:
    """ConfigError unless `value` is one of `choices`; the message lists them."""
    valid = list(choices)
    if value not in valid:
        raise ConfigError(f"{key}: unknown value '{value}'{context}; valid choices: {', '.join(valid)}")


def lookup(table: Mapping[str, V], key: str, name: str, extra: Iterable[str] = ()) -> V:
    """A registry's loud `get`: `table[name]`, or ConfigError naming `key` and every valid name (`extra` adds
    patterns such as `tv:<torchvision name>` that the registry accepts another way)."""
    if name not in table:
        choice(key, name, [*table, *extra])
    return table[name]


def in_range(key: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """ConfigError unless lo <= value <= hi (strictly at an open end); NaN is named as not finite."""
    if value != value:  # NaN compares false with everything: name it
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{key}: {value!r} is outside {interval}")


def finite(value: float) -> bool:
    """math.isfinite that also says False for integers too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def optional_of(tp: Any) -> Any:
    """`X` for `X | None`, else `tp` itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def coerce(key: str, raw: Any, tp: Any, *, strict: bool = False) -> Any:
    """Re-type one value (strings from MLflow, TOML or --set) to the declared type `tp`.

    `strict` (sweep entries): text fields take text only, and numbers must be finite. Without it (ticket
    keys) a number in a text field is its text (`input_shape = 40`), and ranges catch NaN later."""
    inner = optional_of(tp)
    if inner is not tp:  # `X | None`
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in NONE):
            return None
        return coerce(key, raw, inner, strict=strict)
    if typing.get_origin(tp) is tuple:
        (elem,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        try:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
        except TypeError:
            items = None
        if items is not None:
            items = [i.strip() if isinstance(i, str) else i for i in items]
            return tuple(coerce(key, i, elem, strict=strict) for i in items if i not in ("", "()", "[]"))
    else:
        try:
            value = _read(raw, tp, strict)
        except (ValueError, TypeError, OverflowError):
            pass
        else:
            if tp is not float or not strict or finite(value):
                return value
    raise ConfigError(f"{key}: cannot read {raw!r} as {type_name(tp, strict=strict)}")


def _read(raw: Any, tp: Any, strict: bool) -> Any:
    """`raw` as `tp`, or ValueError/TypeError when it cannot be."""
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in TRUE | FALSE:
            return text in TRUE
        raise ValueError
    if tp in (int, float) and isinstance(raw, bool):
        raise ValueError
    if tp is int:
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError
            return int(raw)
        return int(str(raw).strip())
    if tp is float:
        return float(raw)
    if tp is str:
        if strict:  # a sweep entry: text as written (a name with a stray space is refused, not trimmed)
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if not isinstance(raw, str | int | float):
            raise ValueError
        return str(raw).strip()
    raise NotImplementedError(f"unsupported field type {tp!r}")  # a new field type: teach `_read` it


def type_name(tp: Any, *, strict: bool = False) -> str:
    """How an error message names a type: 'an integer', 'a comma-separated list of text', ..."""
    if typing.get_origin(tp) is tuple:
        return f"a comma-separated list of {type_name(typing.get_args(tp)[0])}"
    names = {bool: "true/false", int: "an integer", float: "a finite number" if strict else "a number", str: "text"}
    return names.get(tp, str(tp))

def from_nested(doc: typing.Mapping[str, Any]) -> dict[str, Any]:
    """TOML-style nesting (`[prune] rate = 0.2`) or dotted keys -> flat dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            for sub, v in from_nested(value).items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat
