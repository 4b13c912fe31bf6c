"""Models: every name builds for its inputs, emits (batch, classes) logits from the layer named by
`output_name`, is fixed by the seed, and refuses inputs or names it cannot serve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.config import ConfigError, ModelConfig, choices
from trainables.models import registry as models
from trainables.models.lm import BUILDERS as LM_BUILDERS

CIFAR_NETS = ("vgg11", "vgg16", "vgg19", "resnet20", "resnet32", "resnet56")
CASES = [
    *[(n, (40,)) for n in ("lenet300", "mlp")],
    ("lenet300", (1, 8, 8)),  # MLPs flatten image inputs too
    *[(n, (1, 8, 8)) for n in ("conv2", "conv4", "conv6", "resnet20", "vgg11")],
    *[(n, (3, 32, 32)) for n in ("conv2", "conv4", "conv6", *CIFAR_NETS)],
]

MODELS = [name for name in choices("model.name") if not name.startswith("tv:")]  # what the config accepts
LM_MODELS = list(LM_BUILDERS)


def build(name: str, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(ModelConfig(name=name, widths=(32, 16, 8)), shape, classes)


def test_registry_serves_every_configured_model_name():
    assert set(models.BUILDERS) == set(MODELS)


def test_registry_cases_cover_every_model():
    # Language models take token ids and emit a logit per position: tests/trainables/test_lm.py covers them.
    assert {name for name, _ in CASES} == set(MODELS) - set(LM_MODELS)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_logits_come_from_the_output_layer(name, shape):
    model = build(name, shape, classes=7)
    # Every layer holding parameters is one the pruner knows (Conv/Linear) or never prunes (BatchNorm).
    holders = {type(m) for m in model.modules() if any(True for _ in m.parameters(recurse=False))}
    assert holders <= {nn.Linear, nn.Conv2d, nn.BatchNorm2d}
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 7)
    out = model.get_submodule(model.output_name)
    assert isinstance(out, nn.Linear) and out.out_features == 7
    with torch.no_grad():  # the named layer really produces the logits: zero it and they vanish
        out.weight.zero_()
        out.bias.zero_()
    assert torch.equal(model(x), torch.zeros(2, 7))


def test_mlp_widths_and_layer_names():
    model = build("mlp", (40,))
    linears = [(n, m.in_features, m.out_features)
               for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == [("fc1", 40, 32), ("fc2", 32, 16), ("fc3", 16, 8), ("fc4", 8, 10)]
    assert model.output_name == "fc4"
    assert build("lenet300", (1, 28, 28)).fc1.weight.shape == (300, 784)


def test_paper_sizes_on_cifar():
    # Parameter counts of Frankle & Carbin 2019 (Conv-2: 4.3M) and He et al. 2016 (ResNet-20: 0.27M).
    def count(name: str) -> float:
        return sum(p.numel() for p in build(name, (3, 32, 32)).parameters()) / 1e6

    assert count("conv2") == pytest.approx(4.3, abs=0.05)
    assert count("resnet20") == pytest.approx(0.27, abs=0.01)


@pytest.mark.parametrize("name", ["lenet300", "conv4", "resnet20"])
def test_initialisation_is_fixed_by_the_seed(name):
    shape = (1, 8, 8)
    a, b, c = build(name, shape, seed=5), build(name, shape, seed=5), build(name, shape, seed=6)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), n
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


@pytest.mark.parametrize("name", ["conv2", "vgg16", "resnet56"])
def test_conv_models_need_image_input(name):
    with pytest.raises(ConfigError, match=rf"model.name={name} needs image input \(C, H, W\).*shape 40"):
        build(name, (40,))


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"model.name: unknown value 'resnet18'; valid choices: lenet300,"):
        build("resnet18", (3, 32, 32))


def test_torchvision_model_adapts_to_channels_and_classes():
    model = build("tv:resnet18", (1, 32, 32), classes=7)
    assert model.conv1.in_channels == 1 and model.conv1.weight.shape == (64, 1, 7, 7)
    assert model.output_name == "fc" and model.get_submodule("fc").out_features == 7
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_torchvision_model_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"unknown torchvision classification model 'tv:nope'.*tv:resnet18"):
        build("tv:nope", (3, 32, 32))
