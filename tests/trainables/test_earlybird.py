"""Early-Bird detection: fires on settling masks only, never early, and survives a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch

from trainables.config import ConfigError
from trainables.pruning import masks
from trainables.pruning.earlybird import EarlyBird


def settling(steps: int, seed: int = 0) -> list[masks.Mask]:
    """Magnitude masks of weights whose noise halves each epoch, as when training converges."""
    g = torch.Generator().manual_seed(seed)
    base = {"a": torch.randn(40, 30, generator=g), "b": torch.randn(50, generator=g)}
    noise = [{n: torch.randn(t.shape, generator=g) for n, t in base.items()} for _ in range(steps)]
    dense = {n: torch.ones(t.shape, dtype=torch.bool) for n, t in base.items()}
    return [masks.prune({n: base[n] + 0.5**k * noise[k][n] for n in base}, dense, 0.5, scope="global")
            for k in range(steps)]


def wandering(steps: int) -> list[masks.Mask]:
    g = torch.Generator().manual_seed(1)
    return [{"a": torch.rand(40, 30, generator=g) < 0.5} for _ in range(steps)]


def test_fires_once_masks_settle_and_matches_the_distances():
    eb, fired = EarlyBird(epsilon=0.05, window=3), []
    for mask in settling(12):
        fired.append(eb.update(mask))
        assert fired[-1] == (len(fired) >= 3 and max(eb.distances) <= 0.05)
    first = fired.index(True)
    assert 3 <= first < 11 and all(fired[first:])  # not on the first, noisy epochs; stays settled


def test_never_fires_before_the_window_is_full():
    eb = EarlyBird(epsilon=0.0, window=4)
    mask = settling(1)[0]
    assert [eb.update(mask) for _ in range(5)] == [False, False, False, True, True]
    assert eb.distances == [0.0, 0.0, 0.0]


def test_never_fires_on_masks_that_keep_changing():
    eb = EarlyBird(epsilon=0.1, window=3)
    assert not any(eb.update(m) for m in wandering(10))
    assert len(eb.distances) == 2 and min(eb.distances) > 0.4


def test_state_dict_round_trip_continues_identically():
    sequence = settling(12, seed=3)
    straight, first = EarlyBird(0.05, 3), EarlyBird(0.05, 3)
    for mask in sequence[:5]:
        straight.update(mask), first.update(mask)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyBird(0.05, 3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.distances == straight.distances
    for mask in sequence[5:]:
        assert resumed.update(mask) == straight.update(mask)
        assert resumed.distances == straight.distances


def test_rejects_bad_settings():
    with pytest.raises(ConfigError, match="prune.eb_window: need at least 2"):
        EarlyBird(0.1, 1)
    with pytest.raises(ConfigError, match=r"prune.eb_epsilon: 1.5 is outside \[0, 1\]"):
        EarlyBird(1.5, 3)


def test_the_newest_mask_is_compared_with_each_older_one_not_only_its_neighbour():
    """Three masks drifting by 0.08 per step: neighbours are 0.08 apart, the newest and the oldest 0.16.
    With epsilon 0.1 the detector must not fire (comparing neighbours only would)."""
    a = torch.zeros(100, dtype=torch.bool)
    a[:50] = True
    b, c = a.clone(), a.clone()
    b[46:50], b[50:54] = False, True  # 4 kept entries moved: 8 of 100 differ from a
    c[42:50], c[50:58] = False, True
    drift = [{"w": a}, {"w": b}, {"w": c}]
    assert masks.hamming(drift[1], drift[0]) == masks.hamming(drift[2], drift[1]) == 0.08
    assert masks.hamming(drift[2], drift[0]) == 0.16
    eb = EarlyBird(epsilon=0.1, window=3)
    assert [eb.update(m) for m in drift] == [False, False, False]
    assert eb.distances == [0.16, 0.08]  # newest against the oldest, then against the previous one
    eb = EarlyBird(epsilon=0.16, window=3)
    assert [eb.update(m) for m in drift] == [False, False, True]
