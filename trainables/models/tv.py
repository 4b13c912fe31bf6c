"""`model.name=tv:<name>`: any torchvision classification model, randomly initialised (never downloads weights).

A first convolution made for RGB is rebuilt for the input's channel count; `output_name` is the last
`nn.Linear` with `num_classes` outputs (or, for SqueezeNet, the last such convolution).
"""

from __future__ import annotations

from torch import nn

from trainables.models.layers import image
from trainables.typed import ConfigError

PREFIX = "tv:"

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

    arch = name.removeprefix(PREFIX)
    valid = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if arch not in valid:
        raise ConfigError(f"model.name: unknown torchvision classification model '{name}'; valid choices: "
                          f"{', '.join(PREFIX + v for v in valid)}")
    shape = image(name, input_shape)
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                         **TV_EXTRA.get(arch, {}))
    _adapt_first_conv(model, shape[0])
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
