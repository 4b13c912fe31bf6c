"""The `model.name` registry: every network a ticket can be drawn from, built by name for a task's shapes.

`build(cfg, input_shape, num_classes)` is the one entry point. A model is a builder function
`(ModelConfig, input_shape, num_outputs) -> nn.Module` in its architecture's file plus one line below; the
names register themselves as `model.name`'s valid values (trainables/config.py). Any torchvision
classification model is `tv:<name>` (tv.py). For the language models `input_shape` is (context, vocab) and
the classes are the vocabulary; an RL policy is any vector model, wrapped by its task family.

Every model built here carries `output_name`, the dotted module name of the layer producing the logits,
which the pruner prunes at its own rate (`prune.output_rate`). Architectures use only plain layers the
pruner knows (`nn.Linear`, `nn.Conv2d`, `nn.BatchNorm2d`; the language models `nn.Embedding`, `nn.LSTM`,
`nn.LayerNorm`); no model uses dropout. Initialisation draws from torch's global RNG: `torch.manual_seed`
fixes it.

Example:
    >>> from trainables.config import ModelConfig
    >>> net = build(ModelConfig(name="conv2"), (1, 8, 8), 10)
    >>> net.output_name, net.get_submodule(net.output_name)
    ('classifier.4', Linear(in_features=256, out_features=10, bias=True))
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from trainables import config
from trainables.config import ModelConfig
from trainables.models import cifar, conv, lm, mlp, tv
from trainables.typed import lookup

Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]

BUILDERS: dict[str, Builder] = {
    "lenet300": mlp.lenet300,
    "mlp": mlp.mlp,
    **dict.fromkeys(conv.PLANS, conv.conv),
    **dict.fromkeys(cifar.VGG_PLANS, cifar.vgg),
    **dict.fromkeys(cifar.RESNET_BLOCKS, cifar.resnet),
    **lm.BUILDERS,
}
TORCHVISION = f"{tv.PREFIX}<torchvision name>"  # how error messages show the tv: names
config.register_names("model.name", BUILDERS, prefix=tv.PREFIX, shown=TORCHVISION)


def get(name: str) -> Builder:
    """The builder registered as `name`; an unknown name raises ConfigError listing the valid ones."""
    return lookup(BUILDERS, "model.name", name, [TORCHVISION])


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised `cfg.name` network for inputs of `input_shape` and `num_classes` outputs."""
    if cfg.name.startswith(tv.PREFIX):
        return tv.torchvision_model(cfg.name, input_shape, num_classes)
    return get(cfg.name)(cfg, input_shape, num_classes)
