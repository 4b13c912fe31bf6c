"""The CIFAR networks of the lottery-ticket rewinding papers: VGG-11/16/19 and ResNet-20/32/56.

Both families use 3x3 convolutions with BatchNorm, end in global average pooling and one `fc` linear
classifier (`output_name = "fc"`), and adapt to any (C, H, W) input down to 8x8 digits: a 2x2 pool is
skipped once the feature map is a single pixel, and the global pooling makes the classifier's width
independent of the image size. Convolutions and the classifier use Kaiming-normal initialisation
(He et al. 2015), BatchNorm starts at scale 1 and shift 0; all of it draws from torch's global RNG,
so `torch.manual_seed` fixes a model.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.config import ModelConfig
from trainables.models.layers import image

# VGG plans: output channels of each 3x3 conv, "M" = 2x2 max-pool (Simonyan & Zisserman, CIFAR variant
# with the last pool replaced by global pooling, as in Frankle et al. 2020).
VGG_PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512],
}
RESNET_BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}  # blocks per stage: depth = 6n + 2
RESNET_WIDTHS = (16, 32, 64)  # channels of the three stages (He et al. 2016, section 4.2)


def _kaiming(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out)]


class VGG(nn.Module):
    """VGG with BatchNorm for small images: conv-BN-ReLU stacks, max-pools, global pool, one linear."""

    output_name = "fc"

    def __init__(self, plan: list[int | str], image: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, size = image[0], min(image[1:])
        layers: list[nn.Module] = []
        for step in plan:
            if step == "M":
                if size > 1:  # pooling a 1-pixel map is impossible; later convs just see 1x1
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            assert isinstance(step, int)
            layers += [*_conv_bn(channels, step), nn.ReLU()]
            channels = step
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class Block(nn.Module):
    """Residual block: two 3x3 conv-BN layers; a 1x1 conv-BN shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, stride), nn.ReLU(),
                                  *_conv_bn(c_out, c_out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # option B of He et al.: a learned projection
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: a 16-channel stem, three stages of n blocks, global pool, linear."""

    output_name = "fc"

    def __init__(self, blocks: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(channels, RESNET_WIDTHS[0]), nn.ReLU())
        stages: list[nn.Module] = []
        c_in = RESNET_WIDTHS[0]
        for i, width in enumerate(RESNET_WIDTHS):
            stride = 1 if i == 0 else 2  # each later stage halves the map (a 1x1 map stays 1x1)
            stages += [Block(c_in if j == 0 else width, width, stride if j == 0 else 1)
                       for j in range(blocks)]
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        _kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def vgg(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return VGG(VGG_PLANS[cfg.name], image(cfg.name, shape), num_classes)


def resnet(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet(RESNET_BLOCKS[cfg.name], image(cfg.name, shape)[0], num_classes)
