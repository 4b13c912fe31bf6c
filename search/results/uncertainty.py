"""Reading a ticket run's statistics over replicates back out of its metrics, and ranking by them.

A ticket run carries (search/tracking/schema.py, trainables/stats.py):
- `<score>_mean/_std/_n/_ci95` for each score (replicates of the trial that found it);
- `margin_<control>_<score>_<suffix>`: its margin over each control, paired per replicate;
- after `ticket-search confirm`, the same names prefixed `confirmed_`, and the tag `confirmed = true`.

`best` ranks by the mean (`rank="mean"`) or by the lower end of the 95% interval (`rank="lcb"`: a ticket
without an interval, n = 1, proves no lower bound and ranks after every ticket with one).

Example:
    >>> stats_of({"val_score_mean": 0.9, "val_score_n": 1.0, "density": 0.2})
    {'val_score_mean': 0.9, 'val_score_n': 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from search.tracking import schema as S
from trainables import stats
from trainables.typed import ConfigError

RANKS = ("mean", "lcb")  # `best --rank`
MARGIN_SCORES = ("val_score", "test_score")
PREFIX = f"{S.CONFIRMED}_"


def _is_stat(key: str) -> bool:
    head, _, suffix = key.rpartition("_")
    return suffix in stats.SUFFIXES and head in stats.SCORES


def stats_of(metrics: Mapping[str, float]) -> dict[str, float]:
    """The `<score>_<suffix>` metrics of a run."""
    return {k: v for k, v in metrics.items() if _is_stat(k)}


def margins_of(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """control -> {`val_score_mean`: ..., ...} from a run's `margin_<control>_<score>_<suffix>` metrics."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith(f"{S.MARGIN}_"):
            continue
        rest = key[len(S.MARGIN) + 1:]
        for score in MARGIN_SCORES:
            control, sep, suffix = rest.partition(f"_{score}_")
            if sep and control and suffix in stats.SUFFIXES:
                out.setdefault(control, {})[f"{score}_{suffix}"] = value
    return dict(sorted(out.items()))


def confirmed_of(metrics: Mapping[str, float]) -> dict[str, float]:
    """A confirmed ticket's `confirmed_*` metrics, prefix removed ({} when it was never confirmed)."""
    return {k[len(PREFIX):]: v for k, v in metrics.items() if k.startswith(PREFIX)}


def summary(flat: Mapping[str, float], score: str = "val_score") -> stats.Summary | None:
    return stats.Summary.from_flat(dict(flat), score)


def plus_minus(s: stats.Summary | None, scale: float = 100.0, digits: int = 1, *, signed: bool = False) -> str:
    """`84.4 ± 2.2` (`84.4` when there is no interval; `-` when there is nothing); `+1.6 ± 1.0` with `signed`."""
    if s is None or math.isnan(s.mean):
        return "-"
    text = f"{scale * s.mean:{'+' if signed else ''}.{digits}f}"
    return f"{text} ± {scale * s.ci95:.{digits}f}" if s.ci95 is not None else text


class Ranked(Protocol):
    @property
    def val_score(self) -> float: ...

    @property
    def stats(self) -> dict[str, float]: ...

    @property
    def confirmed(self) -> dict[str, float]: ...


R = TypeVar("R", bound=Ranked)


def rank_key(r: Ranked, rank: str, confirmed: bool) -> float:
    """What `best` sorts by (higher first): the mean, or the interval's lower end, of the val score (its
    confirmed figures with `confirmed`)."""
    flat = r.confirmed if confirmed else r.stats
    s = summary(flat)
    mean = s.mean if s is not None else (math.nan if confirmed else r.val_score)
    if rank == "lcb":
        low = s.low if s is not None else -math.inf
        return low if not math.isnan(low) else -math.inf
    return mean if not math.isnan(mean) else -math.inf


def check_rank(rank: str) -> str:
    if rank not in RANKS:
        raise ConfigError(f"--rank: {rank!r} is not a ranking; valid: {', '.join(RANKS)}")
    return rank


def rerank(records: Sequence[R], rank: str, confirmed: bool, top: int | None) -> list[R]:
    """Records sorted by `rank_key` (stable: ties keep MLflow's order), cut to `top`."""
    ordered = sorted(records, key=lambda r: -rank_key(r, rank, confirmed))
    return ordered[:top] if top is not None else ordered

