"""The search space of a sweep: `Dim`, clipping a space for a smoke run, and the values a key can take.
(spacefile.py reads and checks `[space]` tables; search/tune/searcher.py hands the space to Optuna.)

A dim is a float/int range over one dotted Ticket key (optionally log-scaled or stepped) or a list of
choices. A dim with `when` is sampled only when every condition key's current value (sampled earlier in
this trial, else the base ticket's) is one of its allowed values, so `prune.rewind_iter` can exist only
for `prune.method = imp`. Parameter names are the dotted keys, as everywhere else.

Example:
    >>> from search.sweep.file import load_sweep
    >>> sweep = load_sweep("sweeps/mnist1d.toml")
    >>> upper(sweep.space, sweep.base, "train.epochs") >= sweep.base.train.epochs
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from trainables.config import Ticket


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
            low, high = min(bound(dim.low), cap), min(bound(dim.high), cap)
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


def bound(value: float | None) -> float:
    if value is None:
        raise ValueError("a range dim without bounds")
    return value


def values(dims: tuple[Dim, ...], base: Ticket, key: str) -> list[float]:
    """The values `key` can take in any trial, as far as bounds go: the base value (unless unset) and each
    dim's low and high, or its choices."""
    value = base.flat()[key]
    out = [] if value is None else [float(value)]
    for dim in dims:
        if dim.key == key:
            out += ([float(c) for c in dim.choices if c is not None] if dim.kind == "categorical"
                    else [bound(dim.low), bound(dim.high)])
    return out


def upper(dims: tuple[Dim, ...], base: Ticket, key: str) -> float:
    """The largest value `key` can take in any trial (base value or any dim's high or choice)."""
    return max(values(dims, base, key))


def lower(dims: tuple[Dim, ...], base: Ticket, key: str) -> float:
    """The smallest value `key` can take in any trial (base value or any dim's low or choice)."""
    return min(values(dims, base, key))
