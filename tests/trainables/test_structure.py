"""prune.structure: channel and n:m masks keep their pattern through pruning, IMP levels, controls and
Early-Bird, with exact densities (within one row for channels; min(density, n/m) for n:m)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, Ticket
from trainables.lottery import Lottery
from trainables.pruning import masks as mk
from trainables.pruning import structure as st
from trainables.pruning.earlybird import EarlyBird
from trainables.pruning.imp import level_mask
from trainables.tasks.registry import build_model


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4, 12), nn.ReLU(),
                         nn.Linear(12, 3))


def rows_whole(m: torch.Tensor) -> bool:
    r = m.reshape(m.shape[0], -1)
    return bool((r.all(1) | ~r.any(1)).all())


def groups_ok(m: torch.Tensor, n: int, k: int) -> bool:
    g, _ = st.nm_groups(m.to(torch.float64), k)
    return bool((g.sum(-1) <= n).all())


def test_parse_accepts_the_three_kinds_and_names_the_field_otherwise() -> None:
    assert [str(st.parse(s)) for s in ("unstructured", "channel", "2:4")] == ["unstructured", "channel", "2:4"]
    for bad in ("4:2", "0:4", "block", "2-4"):
        with pytest.raises(ConfigError, match=r"prune.structure: .* unstructured, channel, n:m"):
            Ticket.from_flat({"prune.structure": bad})


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_channel_masks_keep_whole_rows_at_imp_densities(scope: str) -> None:
    model = tiny()
    out = mk.output_param(model)
    base = mk.ones(model)
    mask = base
    for level in (1, 2, 3):
        scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
        mask = level_mask(scores, mask, base, level, 0.4, 0.5, scope, out, "channel")
        for name, m in mask.items():
            if name != out:
                assert rows_whole(m), (level, name)
        if scope == "layer":  # each layer keeps round(rows * 0.6^L) rows
            for name, m in mask.items():
                if name != out:
                    assert int(m.reshape(m.shape[0], -1).all(1).sum()) == round(m.shape[0] * 0.6 ** level)
        else:  # the pool: its weights within one row (the largest, 36 weights) of 0.6^L
            pool = {n: m for n, m in mask.items() if n != out}
            kept, total = mk.counts(pool)
            assert abs(kept - total * 0.6 ** level) <= 36, level
        assert abs(int(mask[out].sum()) - 36 * 0.8 ** level) <= 1  # the output layer: unstructured, own rate


def test_channel_score_is_the_sum_over_the_row() -> None:
    scores = {"w": torch.tensor([[1.0, 1.0, 1.0], [2.5, 0.0, 0.0], [0.0, 0.0, 2.9]])}
    kept = st.prune(scores, {"w": torch.ones(3, 3, dtype=torch.bool)}, 1 / 3, scope="layer", structure="channel")
    assert kept["w"].all(1).tolist() == [True, False, False]  # 3.0 beats the single largest weights


def test_nm_keeps_at_most_n_of_m_along_the_input_dimension() -> None:
    model = tiny()
    scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
    half = st.prune(scores, mk.ones(model), 0.9, scope="global", structure="2:4")
    assert mk.density(half) == 0.5 and all(groups_ok(m, 2, 4) for m in half.values())
    sparse = st.prune(scores, half, 0.2, scope="global", structure="2:4")
    assert abs(mk.density(sparse) - 0.2) < 1e-3 and all(groups_ok(m, 2, 4) for m in sparse.values())
    conv = torch.arange(8 * 4 * 9, dtype=torch.float64).reshape(8, 4, 3, 3)  # the largest inputs win per group
    top = st.nm_candidates(conv, torch.ones_like(conv, dtype=torch.bool), 1, 4)
    assert top[:, 3].all() and not top[:, :3].any()


@pytest.mark.parametrize("structure", ["channel", "2:4"])
def test_controls_and_invert_keep_the_structure_and_the_counts(structure: str) -> None:
    model = tiny()
    out = mk.output_param(model)
    scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
    ticket = st.prune(scores, mk.ones(model), 0.3, scope="layer", output=out, structure=structure)
    gen = torch.Generator().manual_seed(1)
    shuffled = st.control_mask("shuffle", ticket, gen, out, structure)
    rand = st.control_mask("random", ticket, gen, out, structure)
    inverted = st.invert(scores, mk.ones(model), ticket, structure, out)
    assert shuffled is not None and rand is not None
    assert st.control_mask("reinit", ticket, gen, out, structure) is None  # its own mask function serves
    for name, m in ticket.items():
        assert int(shuffled[name].sum()) == int(inverted[name].sum()) == int(m.sum()), name
        for c in (shuffled, rand, inverted):
            assert rows_whole(c[name]) if structure == "channel" and name != out else groups_ok(c[name], 2, 4) \
                if structure == "2:4" else True
    assert not torch.equal(shuffled["0.weight"], ticket["0.weight"])
    assert abs(mk.density(rand) - mk.density(ticket)) < 0.05


def test_channel_collapse_is_reported_and_early_bird_compares_channel_masks() -> None:
    model = tiny()
    scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
    scores["3.weight"] = torch.zeros_like(scores["3.weight"]) - 1  # every neuron of one layer scores lowest
    mask = st.prune(scores, mk.ones(model), 0.05, scope="global", output=mk.output_param(model),
                    output_density=1.0, structure="channel")
    assert mk.collapsed(mask) == ["3.weight"]
    eb = EarlyBird(0.0, 2)
    assert not eb.update(mask) and eb.update(mask)


def test_a_channel_search_runs_with_controls_and_early_bird(one_thread: None) -> None:
    t = Ticket.from_flat({"data.name": "synthetic", "data.size": 400, "model.name": "mlp", "model.widths": "16,8",
                          "train.epochs": 2, "train.device": "cpu",
                          "prune.method": "init", "prune.scorer": "snip", "prune.structure": "channel",
                          "prune.target_density": 0.3, "prune.early_bird": True, "prune.eb_epsilon": 0.5,
                          "prune.eb_window": 2, "prune.controls": "shuffle,invert"})
    (result,) = list(Lottery(t).run())
    assert set(result.controls) == {"shuffle", "invert"}
    for name, m in result.mask.items():
        if name != "fc3.weight":
            assert rows_whole(m), name


def test_bn_scale_ranks_channels_by_their_batchnorm_scale() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    model[1].weight.data = torch.tensor([0.1, -3.0, 0.5, 2.0])
    mask = mk.ones(model)
    scores = st.bn_scale(model, mask, None)
    assert torch.allclose(scores["0.weight"].reshape(4, -1).sum(1), torch.tensor([0.1, 3.0, 0.5, 2.0]))
    assert torch.equal(scores["4.weight"], model[4].weight.detach().abs())  # no BatchNorm follows: |w|
    kept = st.prune(scores, mask, 0.5, scope="layer", output="4.weight", structure="channel")["0.weight"]
    assert kept.reshape(4, -1).all(1).tolist() == [False, True, False, True]
    assert Ticket.from_flat({"prune.scorer": "bn_scale"}).prune.scorer == "bn_scale"


def alive_rows(m: torch.Tensor) -> list[bool]:
    return m.reshape(m.shape[0], -1).any(1).tolist()


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_a_residual_group_keeps_the_same_channels_in_every_layer(scope: str) -> None:
    torch.manual_seed(0)
    model = build_model(Ticket.from_flat({"model.name": "resnet20"}), (3, 8, 8), 10)
    s = st.of("channel", model)
    assert s.groups[0] == ("stem.0.weight", "stages.0.body.3.weight", "stages.1.body.3.weight",
                           "stages.2.body.3.weight")  # the stage-1 residual stream; a block's first conv is alone
    assert [len(g) for g in s.groups] == [4, 4, 4] and "stages.3.shortcut.0.weight" in s.groups[1]
    out, base = mk.output_param(model), mk.ones(model)
    mask = base
    for level in (1, 2):
        scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
        mask = level_mask(scores, mask, base, level, 0.5, 0.2, scope, out, s)
        gen = torch.Generator().manual_seed(level)
        controls = [st.control_mask("shuffle", mask, gen, out, s), st.invert(scores, mask, mask, s, out)]
        for m in (mask, *controls):
            assert m is not None
            for group in s.groups:
                assert all(alive_rows(m[n]) == alive_rows(m[group[0]]) for n in group), (level, group)
        if scope == "layer":  # a group is one layer: 16, 32, 64 channels at 0.5^L
            assert [sum(alive_rows(mask[g[0]])) for g in s.groups] == [round(c * 0.5 ** level) for c in (16, 32, 64)]
    loose = st.prune(scores, base, 0.25, scope="layer", output=out, structure="channel")  # no groups: untied
    assert any(alive_rows(loose[n]) != alive_rows(loose[s.groups[0][0]]) for n in s.groups[0])
