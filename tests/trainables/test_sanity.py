"""The pruning-at-init sanity checks: the `invert` control, and the paired margins a ticket run records."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainables import stats
from trainables.config import Ticket
from trainables.io import checkpoint
from trainables.io.results import MemberResult, mask_information, summarise
from trainables.lottery import Lottery
from trainables.pruning import scorers
from trainables.pruning.sanity import invert

SMALL = {"model.name": "mlp", "model.widths": "32,16", "train.epochs": 1, "train.device": "cpu"}


def test_invert_keeps_the_lowest_scores_among_candidates_at_the_ticket_counts() -> None:
    scores = {"a": torch.tensor([[5.0, 1.0, 3.0], [2.0, 4.0, 0.5]]), "b": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    candidates = {"a": torch.tensor([[True, True, True], [True, True, False]]), "b": torch.ones(4, dtype=torch.bool)}
    ticket = {"a": torch.tensor([[True, False, True], [False, True, False]]), "b": torch.tensor([0, 0, 1, 1]).bool()}
    inv = invert(scores, candidates, ticket)
    # a: 3 kept among the 5 candidates (0.5 is not a candidate): 1.0, 2.0, 3.0
    assert inv["a"].tolist() == [[False, True, True], [True, False, False]]
    assert inv["b"].tolist() == [True, True, False, False]


def test_init_ticket_and_invert_control_share_counts_and_split_the_scores(tmp_path: Path) -> None:
    t = Ticket.from_flat({**SMALL, "prune.method": "init", "prune.scorer": "magnitude", "prune.scope": "layer",
                          "prune.target_density": 0.3, "prune.controls": "invert"})
    lot = Lottery(t)
    lot._start()
    ticket, inv = lot.state.masks[0], lot.state.invert[0]
    model = lot.new_model(lot.init_seed(0))
    model.load_state_dict(lot.state.rewind[0])
    scores = scorers.magnitude(model, ticket, None)  # type: ignore[arg-type]
    for name, m in ticket.items():
        assert int(inv[name].sum()) == int(m.sum()), name
        if int(m.sum()) < m.numel() / 2:  # the kept highest and the kept lowest cannot overlap
            assert not (inv[name] & m).any(), name
            assert scores[name][inv[name]].max() <= scores[name][m].min(), name
    members = lot.members(1)
    assert [(m.name, m.mask is inv) for m in members] == [("ticket", False), ("invert", True)]
    checkpoint.save(lot.state, tmp_path)  # the invert mask survives a checkpoint
    back = checkpoint.load(tmp_path)
    assert all(torch.equal(back.invert[0][n], inv[n]) for n in inv)


def _row(member: str, rep: int, score: float) -> MemberResult:
    return MemberResult(member, rep, 0.2, score, score, 1.0, 1.0, score, score, score, 0)


def test_margins_are_paired_by_replicate_and_give_the_verdict() -> None:
    rows = [_row("ticket", 0, 0.90), _row("ticket", 1, 0.70), _row("ticket", 2, 0.80),
            _row("shuffle", 2, 0.75), _row("shuffle", 0, 0.85), _row("shuffle", 1, 0.66)]
    res = summarise(1, rows, [{}], {}, [], 1.0, 10, 0.1)
    m = stats.Summary.from_flat(res.margins["shuffle"], "test_score")
    expected = stats.paired([0.90, 0.70, 0.80], [0.85, 0.66, 0.75])  # pairs by replicate, not row order
    assert m is not None and m.n == 3 and m.mean == pytest.approx(0.0466667, abs=1e-6)
    assert (m.low, m.high) == pytest.approx((expected.low, expected.high))
    assert m.low > 0 and mask_information(res) == 1.0  # consistent margins: an interval above 0
    rows[3] = _row("shuffle", 2, 0.95)
    assert mask_information(summarise(1, rows, [{}], {}, [], 1.0, 10, 0.1)) == 0.0
    single = summarise(1, rows[:1] + rows[4:5], [{}], {}, [], 1.0, 10, 0.1)
    assert single.margins["shuffle"]["test_score_n"] == 1 and math.isnan(mask_information(single))
