"""What a sweep optimises, by name: the `[objective] name` registry, and the Pareto front it may rank by.

An objective carries everything the service asks of it, so no code compares objective names:
- `metrics`/`modes`: the Ray result names Optuna optimises and their directions (the searcher);
- `samplers`: the Optuna samplers that serve it, preferred first (the sweep file checks `[search] sampler`);
- `check`: what it demands of the sweep file (its target density, whether a key may be searched);
- `targets_density`: it aims at `[objective] target_density`, so a sweep's best tickets are those at it;
- `rank`/`whole`: how its best tickets are ranked (`best`, the closing summary), and whether the ranking
  needs every ticket (a Pareto front cannot be cut to the top N).
An objective is one entry of `OBJECTIVES`. `latency_pareto` trades the validation score against the measured
batch-1 CPU latency of each level's exported ticket (trainables/io/latency.py), beside `pareto`'s sparsity.

Example:
    >>> get("pareto").metrics, get("accuracy_at_density").targets_density, get("latency_pareto").modes
    (('val_score', 'sparsity'), True, ('max', 'min'))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from trainables.typed import ConfigError, lookup

DEFAULT = "accuracy_at_density"  # a sweep that names none, or whose parent run recorded none


class Point(Protocol):
    """A ticket as the rankings see it (`search.results.query.TicketRecord` is one)."""

    @property
    def val_score(self) -> float: ...

    @property
    def sparsity(self) -> float: ...


P = TypeVar("P", bound=Point)


def dominates(a: Point, b: Point) -> bool:
    """`a` is at least as good as `b` on val_score and sparsity and better on one of them."""
    return (a.val_score >= b.val_score and a.sparsity >= b.sparsity
            and (a.val_score > b.val_score or a.sparsity > b.sparsity))


def pareto_front(records: Iterable[P]) -> list[P]:
    """Non-dominated records over (val_score, sparsity), both maximised, sorted by sparsity (ascending).

    Records without a finite val_score or sparsity are left out. Equal points are all kept.
    """
    pool = [r for r in records if math.isfinite(r.val_score) and math.isfinite(r.sparsity)]
    # Sweep from the sparsest down: a record survives when no sparser-or-equal one scores at least as
    # well with a strict gain somewhere. Sorting makes this O(n log n) instead of all pairs.
    pool.sort(key=lambda r: (-r.sparsity, -r.val_score))
    front: list[P] = []
    best = -math.inf  # best val_score among strictly sparser records seen so far
    i = 0
    while i < len(pool):
        j = i
        while j < len(pool) and pool[j].sparsity == pool[i].sparsity:
            j += 1
        top_score = pool[i].val_score  # the group is sorted by val_score descending
        if top_score > best:
            front += [r for r in pool[i:j] if r.val_score == top_score]
            best = top_score
        i = j
    return sorted(front, key=lambda r: (r.sparsity, -r.val_score))


class Timed(Point, Protocol):
    @property
    def latency_ms(self) -> float: ...


T = TypeVar("T", bound=Timed)


def latency_front(records: Iterable[T]) -> list[T]:
    """Non-dominated records over (val_score max, latency_ms min), fastest first; records without a finite
    val_score or latency are left out, equal points all kept."""
    pool = [r for r in records if math.isfinite(r.val_score) and math.isfinite(r.latency_ms)]
    pool.sort(key=lambda r: (r.latency_ms, -r.val_score))
    front: list[T] = []
    best = -math.inf  # best val_score among strictly faster records
    for latency in dict.fromkeys(r.latency_ms for r in pool):
        group = [r for r in pool if r.latency_ms == latency]
        top = group[0].val_score
        if top > best:
            front += [r for r in group if r.val_score == top]
            best = top
    return front


def _by_score(records: Sequence[P]) -> list[P]:
    """Best validation score first: the order MLflow's query already returns them in."""
    return list(records)


def _needs_target(target_density: float | None, searched: Collection[str]) -> None:
    if target_density is None:
        raise ConfigError("[objective] target_density: accuracy_at_density needs a density in (0, 1]")
    if "prune.target_density" in searched:
        raise ConfigError('[space] "prune.target_density": accuracy_at_density fixes it to [objective] '
                          "target_density; search it with objective pareto")


def _no_check(target_density: float | None, searched: Collection[str]) -> None:
    """Any target density (or none), any searched key."""


@dataclass(frozen=True)
class Objective:
    metrics: tuple[str, ...]  # Ray result names Optuna optimises
    modes: tuple[str, ...]  # "max" or "min", one per metric
    samplers: tuple[str, ...]  # the [search] samplers that serve it (search/tune/algorithms.py), preferred first
    described: str  # how an error about its sampler names it: "... for one objective"
    check: Callable[[float | None, Collection[str]], None]  # (target density, keys searched in [space])
    targets_density: bool  # best tickets of a sweep are those at or below its target density
    rank: Callable[[Sequence[Any]], list[Any]]  # tickets (Points), best val_score first -> its ranking
    whole: bool  # the ranking needs every ticket (a front is never cut to the top N)
    title: str  # `best --sweep NAME`'s table title; {sweep} is the name
    measures_latency: bool = False  # trials time each level's exported ticket (metric latency_ms)


OBJECTIVES: dict[str, Objective] = {
    "accuracy_at_density": Objective(
        metrics=("val_score",), modes=("max",), samplers=("tpe", "random", "gp"), described="one objective",
        check=_needs_target, targets_density=True, rank=_by_score, whole=False,
        title="Best tickets of {sweep!r} by validation score"),
    "pareto": Objective(
        metrics=("val_score", "sparsity"), modes=("max", "max"), samplers=("tpe", "nsga2", "random"),
        described="objective pareto", check=_no_check, targets_density=False, rank=pareto_front, whole=True,
        title="Pareto front of '{sweep}' (val score vs sparsity)"),
    "latency_pareto": Objective(
        metrics=("val_score", "latency_ms"), modes=("max", "min"), samplers=("tpe", "nsga2", "random"),
        described="objective latency_pareto", check=_no_check, targets_density=False, rank=latency_front,
        whole=True, title="Pareto front of '{sweep}' (val score vs exported latency, batch 1, CPU)",
        measures_latency=True),
}


def get(name: str) -> Objective:
    """The objective registered as `name`; ConfigError listing the valid ones."""
    return lookup(OBJECTIVES, "[objective] name", name)
