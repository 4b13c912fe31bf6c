"""Every network a ticket can be drawn from, built by name for an input shape and a class count.

`build(cfg, input_shape, num_classes)` is the one entry point. It owns the `model.name` registry:
the MLPs and Conv-2/4/6 of the Lottery Ticket paper (Frankle & Carbin 2019) here, the CIFAR VGGs and
ResNets in `models_cifar.py`, the language models `lstm` and `transformer` in `models_lm.py` (for them
`input_shape` is (context, vocab) and the classes are the vocabulary), and any torchvision
classification model as `tv:<name>`. An RL policy is any vector model here, wrapped with its critic by
`models_rl.py`.

Every model built here carries `output_name`, the dotted module name of the layer producing the logits
(the final classifier `nn.Linear`), which the pruner prunes at its own rate (`prune.output_rate`). The
classifiers use only plain `nn.Linear`, `nn.Conv2d` and `nn.BatchNorm2d` layers (the language models
add `nn.Embedding`, `nn.LSTM` and `nn.LayerNorm`), so the pruner finds every weight; no model uses dropout.
Initialisation draws from torch's global RNG: `torch.manual_seed` fixes it.

Example:
    >>> from trainables.config import ModelConfig
    >>> net = build(ModelConfig(name="conv2"), (1, 8, 8), 10)
    >>> net.output_name, net.get_submodule(net.output_name)
    ('classifier.4', Linear(in_features=256, out_features=10, bias=True))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from trainables.config import ConfigError, ModelConfig
from trainables.models import cifar as models_cifar
from trainables.models import lm as models_lm

# Conv-N plans of the Lottery Ticket paper (figure 2): channels of each 3x3 conv, "M" = 2x2 max-pool.
CONV_PLANS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}
CONV_HIDDEN = (256, 256)  # widths of the fully connected layers after the convolutions
LENET300 = (300, 100)


def _glorot(module: nn.Module) -> None:
    """Gaussian Glorot weights and zero biases, the initialisation of the Lottery Ticket paper."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _dense_stack(widths: Sequence[int], num_classes: int) -> nn.Sequential:
    """Linear-ReLU layers through `widths` (first entry = input features), then the output Linear."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(w_in, w_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs; layers `fc1 .. fcK`, the last one the output."""

    def __init__(self, in_features: int, widths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        sizes = [in_features, *widths, num_classes]
        for i, (w_in, w_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            self.add_module(f"fc{i}", nn.Linear(w_in, w_out))
        self.depth = len(sizes) - 1
        self.output_name = f"fc{self.depth}"
        self.relu = nn.ReLU()
        _glorot(self)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for i in range(1, self.depth + 1):
            x = self.get_submodule(f"fc{i}")(x)
            if i < self.depth:
                x = self.relu(x)
        return x


class ConvNet(nn.Module):
    """Conv-2/4/6: 3x3 conv-ReLU stacks with 2x2 max-pools, then fully connected 256-256-classes."""

    def __init__(self, plan: list[int | str], image: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, h, w = image
        layers: list[nn.Module] = []
        for step in plan:
            if step == "M":
                if min(h, w) > 1:  # an 8x8 digit reaches 1x1 after three pools; further pools are skipped
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            assert isinstance(step, int)
            layers += [nn.Conv2d(channels, step, 3, padding=1), nn.ReLU()]
            channels = step
        self.features = nn.Sequential(*layers)
        self.classifier = _dense_stack([channels * h * w, *CONV_HIDDEN], num_classes)
        self.output_name = f"classifier.{len(self.classifier) - 1}"
        _glorot(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def _image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image input, or ConfigError for vectors (MNIST-1D, flat synthetic data)."""
    if len(input_shape) != 3:
        shape = "x".join(map(str, input_shape))
        raise ConfigError(f"model.name={name} needs image input (C, H, W); the data has input shape "
                          f"{shape}: use lenet300 or mlp")
    c, h, w = input_shape
    return c, h, w


def _lenet300(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), LENET300, num_classes)


def _mlp(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), cfg.widths, num_classes)


def _conv(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ConvNet(CONV_PLANS[cfg.name], _image(cfg.name, shape), num_classes)


def _vgg(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return models_cifar.vgg(cfg.name, _image(cfg.name, shape), num_classes)


def _resnet(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return models_cifar.resnet(cfg.name, _image(cfg.name, shape), num_classes)


Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]

BUILDERS: dict[str, Builder] = {
    "lenet300": _lenet300,
    "mlp": _mlp,
    **dict.fromkeys(CONV_PLANS, _conv),
    **dict.fromkeys(models_cifar.VGG_PLANS, _vgg),
    **dict.fromkeys(models_cifar.RESNET_BLOCKS, _resnet),
    "lstm": models_lm.lstm,
    "transformer": models_lm.transformer,
}


def get(name: str) -> Builder:
    """The builder registered as `name`; an unknown name raises ConfigError listing the valid ones."""
    if name not in BUILDERS:
        raise ConfigError(f"model.name: unknown value '{name}'; valid choices: "
                          f"{', '.join(BUILDERS)}, tv:<torchvision name>")
    return BUILDERS[name]


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised `cfg.name` network for inputs of `input_shape` and `num_classes` outputs."""
    if cfg.name.startswith("tv:"):
        return torchvision_model(cfg.name, input_shape, num_classes)
    return get(cfg.name)(cfg, input_shape, num_classes)


# -- torchvision models ---------------------------------------------------------------------------

# Extra constructor arguments: the training loop needs one logits tensor, not GoogLeNet/Inception's
# (logits, aux logits) tuple in training mode; init_weights=True silences their "init is slow" warning.
TV_EXTRA: dict[str, dict[str, object]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """`tv:<name>`: a randomly initialised torchvision classifier (never downloads weights).

    A first convolution made for RGB is rebuilt for the input's channel count; `output_name` is set to the
    last `nn.Linear` with `num_classes` outputs (or, for SqueezeNet, the last such convolution).
    """
    import torchvision.models  # imported late: the model zoo is slow to import and rarely used

    arch = name.removeprefix("tv:")
    valid = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if arch not in valid:
        raise ConfigError(f"model.name: unknown torchvision classification model '{name}'; valid choices: "
                          f"{', '.join('tv:' + v for v in valid)}")
    image = _image(name, input_shape)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                         **TV_EXTRA.get(arch, {}))
    _adapt_first_conv(model, image[0])
    model.output_name = _logits_layer(name, model, num_classes)
    return model


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Replace the first 3-channel Conv2d by a freshly initialised one reading `channels` channels."""
    if channels == 3:
        return
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            # Resized in place, so stride, padding and the module's name are kept; groups=1 because a
            # stem convolution is never grouped in practice and other counts need not divide `channels`.
            conv.in_channels, conv.groups = channels, 1
            shape = (conv.out_channels, channels, *conv.kernel_size)
            conv.weight = nn.Parameter(conv.weight.new_empty(shape))
            conv.reset_parameters()
            return


def _logits_layer(name: str, model: nn.Module, num_classes: int) -> str:
    modules = list(model.named_modules())
    linear = [p for p, m in modules if isinstance(m, nn.Linear) and m.out_features == num_classes]
    conv = [p for p, m in modules if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]
    if not (linear or conv):
        raise ConfigError(f"model.name={name}: found no output layer with {num_classes} outputs to prune")
    return (linear or conv)[-1]
