"""Statistics over replicates (trainables/stats.py) against values computed by hand and by scipy."""

from __future__ import annotations

import math

import pytest

from trainables import stats


def test_summary_of_known_values():
    s = stats.summary([0.90, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02) and s.n == 3
    assert s.ci95 == pytest.approx(4.3027 * 0.02 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) = 4.3027
    assert (s.low, s.high) == (pytest.approx(0.92 - s.ci95), pytest.approx(0.92 + s.ci95))
    two = stats.summary([1.0, 3.0])  # std sqrt(2), t(0.975, 1) = 12.7062
    assert two.ci95 == pytest.approx(12.7062 * math.sqrt(2) / math.sqrt(2))


def test_one_value_has_no_interval():
    s = stats.summary([0.7])
    assert (s.mean, s.std, s.n, s.ci95) == (0.7, None, 1, None)
    assert s.low == -math.inf and s.flat("val_score") == {"val_score_mean": 0.7, "val_score_n": 1.0}
    with pytest.raises(ValueError, match="no values"):
        stats.summary([])


def test_t_quantiles_match_scipy_for_every_df():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 10, 29, 30, 31, 40, 60, 100, 1000):
        assert stats.t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-4)
    with pytest.raises(ValueError, match="degrees of freedom"):
        stats.t975(0)


def test_paired_margin_is_the_summary_of_differences():
    ticket, control = [0.90, 0.80, 0.85], [0.88, 0.79, 0.80]
    m = stats.paired(ticket, control)
    d = stats.summary([0.02, 0.01, 0.05])
    assert (m.mean, m.std, m.ci95) == (pytest.approx(d.mean), pytest.approx(d.std), pytest.approx(d.ci95))
    # pairing removes the seed-to-seed spread the two share: the unpaired spread is far wider
    assert m.ci95 < stats.summary(ticket).ci95
    with pytest.raises(ValueError, match="equal counts"):
        stats.paired([1.0], [1.0, 2.0])


def test_flat_round_trip_and_separation():
    s = stats.summary([0.5, 0.6, 0.7])
    assert stats.Summary.from_flat(s.flat("x"), "x") == s
    assert stats.Summary.from_flat({}, "x") is None
    far, near = stats.summary([0.9, 0.91, 0.92]), stats.summary([0.55, 0.6, 0.65])
    assert stats.separated(far, s) and not stats.separated(near, s)
    assert not stats.separated(stats.summary([1.0]), stats.summary([0.0]))  # no interval: nothing shown
