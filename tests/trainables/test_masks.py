"""Mask science: exact top-k densities over IMP levels, controls, transfer, and bit-packed mask files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn

from trainables.config import ConfigError
from trainables.io import maskio
from trainables.pruning import masks, schedule


def net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 37), nn.ReLU(), nn.Linear(37, classes))


def random_scores(mask: masks.Mask, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.shape, generator=g) for n, m in mask.items()}


def test_prunable_weights_only_in_module_order():
    model = net()
    assert list(masks.prunable(model)) == ["0.weight", "4.weight", "6.weight"]
    assert list(masks.prunable(model, bias=True)) == ["0.weight", "0.bias", "4.weight", "4.bias",
                                                      "6.weight", "6.bias"]
    assert masks.output_param(model) == "6.weight"
    model.output_name = "4"
    assert masks.output_param(model) == "4.weight"
    assert masks.output_param(nn.Conv2d(1, 2, 3)) is None


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_density_after_each_imp_level_is_exact(scope):
    model, rate, output_rate = net(), 0.2, 0.5
    mask, out = masks.ones(model), masks.output_param(model)
    pool = [n for n in mask if n != out]
    for level in range(1, 7):
        d, d_out = schedule.level_densities(rate, output_rate, level)
        scores = random_scores(mask, level)
        # Adversarial scores: pruned weights score highest, yet must never come back.
        scores = {n: torch.where(mask[n], s, 10.0) for n, s in scores.items()}
        new = masks.prune(scores, mask, d, scope=scope, output=out, output_density=d_out)
        assert all(not (new[n] & ~mask[n]).any() for n in mask)
        for name in (pool if scope == "layer" else []):
            assert abs(int(new[name].sum()) - mask[name].numel() * d) <= 1
        total = sum(mask[n].numel() for n in pool)
        assert abs(sum(int(new[n].sum()) for n in pool) - total * d) <= 1
        assert abs(int(new[out].sum()) - new[out].numel() * d_out) <= 1
        mask = new
    assert masks.density(mask) < 0.3


def test_ties_keep_lowest_indices_not_a_threshold():
    mask = {"a": torch.ones(2, 3, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    flat = masks.prune({"a": torch.zeros(2, 3), "b": torch.zeros(4)}, mask, 0.5, scope="layer")
    assert flat["a"].reshape(-1).tolist() == [True, True, True, False, False, False]
    assert flat["b"].tolist() == [True, True, False, False]
    pooled = masks.prune({"a": torch.zeros(2, 3), "b": torch.zeros(4)}, mask, 0.7, scope="global")
    assert pooled["a"].all() and pooled["b"].tolist() == [True, False, False, False]
    # A threshold at the 3rd score (2.0) would keep four weights; top-k keeps exactly three.
    row = {"r": torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 0.0])}
    kept = masks.prune(row, {"r": torch.ones(6, dtype=torch.bool)}, 0.5, scope="layer")
    assert kept["r"].tolist() == [True, False, True, True, False, False]


def test_output_layer_ranks_alone_and_can_stay_dense():
    model = net()
    mask, out = masks.ones(model), masks.output_param(model)
    new = masks.prune(random_scores(mask, 1), mask, 0.1, scope="global", output=out, output_density=1.0)
    assert new[out].all()
    assert abs(masks.density({n: m for n, m in new.items() if n != out}) - 0.1) < 1e-3


def test_prune_rejects_unknown_scope_and_bad_scores():
    mask = {"a": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(ConfigError, match="prune.scope: unknown value 'local'; valid choices: global, layer"):
        masks.prune({"a": torch.zeros(4)}, mask, 0.5, scope="local")
    with pytest.raises(ValueError, match="scores for 'a' missing"):
        masks.prune({"a": torch.zeros(5)}, mask, 0.5, scope="layer")


def test_apply_density_collapse_and_hamming():
    model = net()
    mask = masks.ones(model)
    mask["4.weight"][:] = False
    mask["0.weight"][0] = False
    masks.apply_(model, mask)
    assert (model[4].weight == 0).all() and (model[0].weight[0] == 0).all() and model[0].weight[1].any()
    assert masks.collapsed(mask) == ["4.weight"]
    assert masks.layer_density(mask)["0.weight"] == pytest.approx(0.75)
    kept = sum(int(m.sum()) for m in mask.values())
    assert masks.density(mask) == kept / sum(m.numel() for m in mask.values())
    assert masks.hamming(mask, masks.ones(model)) == pytest.approx(1 - masks.density(mask))


def test_shuffle_keeps_layer_counts_and_moves_weights():
    model = net()
    mask = masks.prune(random_scores(masks.ones(model), 0), masks.ones(model), 0.3, scope="global")
    shuffled = masks.shuffle(mask, torch.Generator().manual_seed(0))
    assert {n: int(m.sum()) for n, m in shuffled.items()} == {n: int(m.sum()) for n, m in mask.items()}
    assert masks.hamming(mask, shuffled) > 0.2


def test_random_like_keeps_global_count_and_output_count():
    model = net()
    out = masks.output_param(model)
    mask = masks.prune(random_scores(masks.ones(model), 0), masks.ones(model), 0.3, scope="layer",
                       output=out, output_density=0.8)
    rand = masks.random_like(mask, torch.Generator().manual_seed(0), output=out)
    pool = [n for n in mask if n != out]
    assert sum(int(rand[n].sum()) for n in pool) == sum(int(mask[n].sum()) for n in pool)
    assert int(rand[out].sum()) == int(mask[out].sum())
    assert masks.hamming(mask, rand) > 0.2


def test_refit_copies_same_shapes_and_redraws_changed_output():
    source = net(classes=10)
    mask = masks.prune(random_scores(masks.ones(source), 0), masks.ones(source), 0.4, scope="layer")
    refit = masks.refit(mask, net(classes=5), torch.Generator().manual_seed(0))
    assert all(torch.equal(refit[n], mask[n]) for n in ("0.weight", "4.weight"))
    assert refit["6.weight"].shape == (5, 37)
    assert int(refit["6.weight"].sum()) == round(0.4 * 5 * 37)
    with pytest.raises(ConfigError, match="prune.init_mask: the mask file has no layer '6.weight'"):
        masks.refit({n: m for n, m in mask.items() if n != "6.weight"}, source, torch.Generator())
    with pytest.raises(ConfigError, match="prune.init_mask: the model has no prunable layer 'extra.weight'"):
        masks.refit({**mask, "extra.weight": mask["6.weight"]}, source, torch.Generator())


def test_maskio_round_trip_is_exact_and_one_bit_per_weight(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = {"conv.weight": torch.rand(64, 3, 5, 5, generator=g) > 0.5,
            "fc.weight": torch.rand(1001, 97, generator=g) > 0.9,
            "empty": torch.zeros(0, 3, dtype=torch.bool)}
    path = tmp_path / "m.safetensors"
    maskio.save(mask, path, {"density": "0.1", "dataset": "digits"})
    assert os.listdir(tmp_path) == ["m.safetensors"]  # the temporary file was renamed, not left behind
    n = sum(m.numel() for m in mask.values())
    assert n / 8 <= path.stat().st_size <= n / 8 + 1024
    loaded = maskio.load(path)
    assert list(loaded) == list(mask)
    assert all(loaded[k].dtype == torch.bool and torch.equal(loaded[k], mask[k]) for k in mask)
    assert maskio.load_metadata(path) == {"density": "0.1", "dataset": "digits"}


def test_maskio_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    maskio.save({"w": torch.ones(9, dtype=torch.bool)}, path)
    torch.save({"w": torch.ones(9, dtype=torch.bool)}, tmp_path / "pickle.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert maskio.load(path)["w"].all()
    with pytest.raises(maskio.MaskFileError, match="pickle.safetensors: not a valid mask file"):
        maskio.load(tmp_path / "pickle.safetensors")


def test_maskio_rejects_truncated_and_malformed_files(tmp_path):
    good = tmp_path / "good.safetensors"
    maskio.save({"w": torch.ones(100, dtype=torch.bool)}, good)
    data = good.read_bytes()
    for cut in (4, 30, len(data) - 3):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(maskio.MaskFileError, match="cut.safetensors: not a valid mask file"):
            maskio.load(tmp_path / "cut.safetensors")
    packed = {"w": np.zeros(13, dtype=np.uint8)}
    save_file(packed, tmp_path / "shape.safetensors",
              metadata={"mask_format": "packbits-v1", "mask_shapes": '{"w": [10, 20]}'})
    with pytest.raises(maskio.MaskFileError, match=r"shape \[10, 20\] needs 25 bytes"):
        maskio.load(tmp_path / "shape.safetensors")
    save_file(packed, tmp_path / "bare.safetensors")
    with pytest.raises(maskio.MaskFileError, match="missing 'mask_format' or 'mask_shapes' metadata"):
        maskio.load(tmp_path / "bare.safetensors")
    with pytest.raises(maskio.MaskFileError, match="no such mask file"):
        maskio.load(tmp_path / "absent.safetensors")


def test_maskio_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    maskio.save({"w": torch.ones(8, dtype=torch.bool)}, path)

    def crash(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        maskio.save({"w": torch.zeros(8, dtype=torch.bool)}, path)
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert maskio.load(path)["w"].all()
