"""Paired margins of replicates (kept local to the sanity checks): a mean difference and its 95% Student t interval.

Replicates of a trial share seeds per replicate, so a margin of the ticket over a control is paired: the
interval is over the per-replicate differences (DESIGN.md section 9). With one replicate there is no
interval (its bounds are NaN).

Example:
    >>> m = paired_margin([0.9, 0.8, 0.85], [0.7, 0.75, 0.7])
    >>> round(m.mean, 3), m.n, m.lo < m.mean < m.hi
    (0.133, 3, True)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; the normal's beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Margin:
    """Mean of paired differences a - b with its 95% t interval (NaN bounds for a single pair)."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_json(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def paired_margin(a: Sequence[float], b: Sequence[float]) -> Margin:
    """Mean of a[i] - b[i] and its 95% Student t interval over the pairs."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need equally many values, at least one: got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Margin(mean, math.nan, math.nan, 1)
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Margin(mean, mean - half, mean + half, len(diffs))
