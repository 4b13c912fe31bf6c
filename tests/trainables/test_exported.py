"""Exported forms of a trained masked network compute what it computes: compact (channels removed, BatchNorm
and padding folded) and sparse (CSR) on a conv net; compact on ResNet-20, residual groups removed whole; a
network of other operations is refused with one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, Ticket
from trainables.io.exported import TOLERANCE, convert
from trainables.io.packing import pack, unpack
from trainables.pruning import masks as mk
from trainables.pruning import structure as st
from trainables.tasks.registry import build_model


def vgg_like() -> nn.Module:
    """VGG's pattern, small: conv-BN-ReLU, max-pool, conv-BN-ReLU, global pool, flatten, linear."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def trained_like(name: str, structure: str, shape: tuple[int, ...] = (3, 16, 16),
                 density: float = 0.25) -> tuple[nn.Module, mk.Mask]:
    """A model with random BatchNorm statistics and biases (as after training), masked at `density`."""
    torch.manual_seed(0)
    model = vgg_like() if name == "vgg_like" else build_model(Ticket.from_flat({"model.name": name}), shape, 10)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    for p in model.parameters():
        if p.dim() == 1:
            p.data.normal_(0, 0.3)  # non-zero shifts: a removed channel outputs a constant, which must be folded
    scores = {n: torch.rand(p.shape) for n, p in mk.prunable(model).items()}
    mask = st.prune(scores, mk.ones(model), density, scope="layer", output=mk.output_param(model),
                    structure=st.of(structure, model))
    mk.apply_(model, mask)
    return model, mask


@pytest.mark.parametrize(("name", "structure", "fmt"), [("vgg_like", "channel", "compact"),
                                                        ("conv2", "channel", "compact"),
                                                        ("conv2", "unstructured", "sparse")])
def test_exported_forms_match_the_masked_network(name: str, structure: str, fmt: str) -> None:
    model, mask = trained_like(name, structure)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        got = convert(model, mask, fmt, (3, 16, 16))(x)
    assert (got - expected).abs().max() <= TOLERANCE
    if fmt == "compact":
        conv = [m for m in convert(model, mask, fmt, (3, 16, 16)).modules() if isinstance(m, nn.Conv2d)]
        assert conv[0].out_channels == round(0.25 * len(mask[next(iter(mask))]))  # the removed channels are gone


def test_packing_round_trips_and_rejects_a_mismatch() -> None:
    model, mask = trained_like("conv2", "unstructured")
    packed = pack(model.state_dict(), mask)
    assert packed["features.0.weight"].numel() == int(mask["features.0.weight"].sum())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in unpack(packed, mask).items())
    packed["features.0.weight"] = packed["features.0.weight"][1:]
    with pytest.raises(ConfigError, match="trained weights: 'features.0.weight' holds"):
        unpack(packed, mask)


@pytest.mark.parametrize("density", [0.5, 0.05])
def test_compact_resnet20_removes_residual_groups_and_matches(density: float) -> None:
    """Eval mode, BatchNorm kept (sliced), removed channels' constants folded: within TOLERANCE (1e-4)."""
    model, mask = trained_like("resnet20", "channel", density=density)
    small = convert(model, mask, "compact", (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= TOLERANCE
    widths = {n.removesuffix(".layer"): m.out_channels for n, m in small.named_modules()  # .layer: in a BiasMap
              if isinstance(m, nn.Conv2d)}
    assert widths["stem.0"] == widths["stages.2.body.3"] == max(1, round(density * 16))
    assert widths["stages.8.body.3"] == max(1, round(density * 64))  # the residual stream of stage 3 narrowed
    assert small.get_submodule("fc").in_features == widths["stages.8.body.3"]
    assert sum(p.numel() for p in small.parameters()) < density * 1.1 * sum(p.numel() for p in model.parameters())


def test_compact_handles_an_untied_mask_and_refuses_a_concatenation_in_one_line() -> None:
    model, mask = trained_like("resnet20", "unstructured")  # rows die only by chance: nothing tied to remove
    with torch.no_grad():
        x = torch.randn(2, 3, 16, 16)
        assert (convert(model, mask, "compact", (3, 16, 16))(x) - model(x)).abs().max() <= TOLERANCE

    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))

    with pytest.raises(ConfigError, match=r"^export --format compact: compact supports conv, .*'cat' has 2 inputs$"):
        convert(Cat(), mk.ones(Cat()), "compact", (3, 4, 4))
