"""The latency_pareto objective: its front over (val score, exported latency), and trials asked to measure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from search.sweep import objectives
from search.sweep.file import sweep_from_dict
from search.tune.study import param_space
from trainables.trial import MEASURE_LATENCY


@dataclass(frozen=True)
class P:
    val_score: float
    latency_ms: float
    sparsity: float = 0.0


def test_latency_front_keeps_the_non_dominated_tickets_fastest_first() -> None:
    pts = [P(0.90, 2.0), P(0.95, 3.0), P(0.80, 1.0), P(0.85, 2.5), P(0.95, 4.0), P(0.92, 1.5), P(math.nan, 0.1),
           P(0.99, math.nan), P(0.80, 1.0)]
    front = objectives.get("latency_pareto").rank(pts)
    assert front == [P(0.80, 1.0), P(0.80, 1.0), P(0.92, 1.5), P(0.95, 3.0)]


def test_a_latency_sweep_asks_its_trials_to_measure_and_others_do_not() -> None:
    measured = sweep_from_dict({"name": "fast", "objective": {"name": "latency_pareto"}})
    plain = sweep_from_dict({"name": "plain", "objective": {"name": "pareto"}})
    assert param_space(measured)[MEASURE_LATENCY] is True
    assert MEASURE_LATENCY not in param_space(plain)
    assert measured.metrics == ["val_score", "latency_ms"] and measured.modes == ["max", "min"]
