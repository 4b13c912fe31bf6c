"""Statistics over replicate seeds: mean, standard deviation, n and a 95% interval, in one place.

Every score of a level with `prune.replicates` > 1 is summarised here, by the engine (results.json, Ray)
and by the service (MLflow, `best`, `confirm`, `plot`), so the arithmetic and the names exist once:

- `std` is the sample standard deviation (n - 1 in the denominator);
- `ci95` is the half-width of the two-sided 95% interval of the mean from Student's t distribution,
  t(0.975, n - 1) * std / sqrt(n); with n = 1 there is no interval (None, and no metric is written);
- a margin over a control is *paired*: replicate r's ticket minus replicate r's control (same data order,
  same rewind point), summarised like any other score.

Flat names (results.json `stats`, Ray results, MLflow metrics): `<score>_mean`, `<score>_std`,
`<score>_n`, `<score>_ci95`, e.g. `val_score_mean`.

Example:
    >>> s = summary([0.90, 0.92, 0.94]); round(s.mean, 3), round(s.std, 3), s.n, round(s.ci95, 4)
    (0.92, 0.02, 3, 0.0497)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SUFFIXES = ("mean", "std", "n", "ci95")
SCORES = ("val_score", "test_score", "val_acc", "test_acc", "val_loss", "test_loss")  # summarised per level

# t(0.975, df) for df = 1..30 (two-sided 95%); beyond 30 a Cornish-Fisher expansion around z is within 1e-4.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (the 95% two-sided multiplier)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


@dataclass(frozen=True)
class Summary:
    """Mean, sample std, n and the 95% half-width (None when n = 1) of a set of replicate values."""

    mean: float
    std: float | None
    n: int
    ci95: float | None

    @property
    def low(self) -> float:
        """The lower end of the interval; -inf without one (an unreplicated score proves no lower bound)."""
        return self.mean - self.ci95 if self.ci95 is not None else -math.inf

    @property
    def high(self) -> float:
        return self.mean + self.ci95 if self.ci95 is not None else math.inf

    def flat(self, name: str) -> dict[str, float]:
        """`{name_mean, name_n[, name_std, name_ci95]}`: what results.json, Ray and MLflow carry."""
        out = {f"{name}_mean": self.mean, f"{name}_n": float(self.n)}
        if self.std is not None and self.ci95 is not None:
            out.update({f"{name}_std": self.std, f"{name}_ci95": self.ci95})
        return out

    @classmethod
    def from_flat(cls, d: dict[str, float], name: str) -> Summary | None:
        """The summary `flat` wrote (None when `name_mean` is absent); a NaN std or interval is none."""
        if f"{name}_mean" not in d:
            return None
        std, ci = d.get(f"{name}_std"), d.get(f"{name}_ci95")
        std = None if std is None or math.isnan(std) else std
        ci = None if ci is None or math.isnan(ci) else ci
        return cls(d[f"{name}_mean"], std, int(d.get(f"{name}_n", 1)), ci)


def summary(values: Iterable[float]) -> Summary:
    """Summarise replicate values (at least one)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summary of no values")
    mean = statistics.fmean(xs)
    if len(xs) == 1:
        return Summary(mean, None, 1, None)
    std = statistics.stdev(xs)
    return Summary(mean, std, len(xs), t975(len(xs) - 1) * std / math.sqrt(len(xs)))


def paired(a: Sequence[float], b: Sequence[float]) -> Summary:
    """The paired difference a[r] - b[r] over replicates r (same length)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    return summary(x - y for x, y in zip(a, b, strict=True))


def separated(a: Summary, b: Summary) -> bool:
    """The two intervals do not overlap (always False when either has none)."""
    return a.low > b.high or b.low > a.high
