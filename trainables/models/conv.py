"""Conv-2/4/6 of the Lottery Ticket paper (Frankle & Carbin 2019, figure 2) for any (C, H, W) input.

3x3 conv-ReLU stacks with 2x2 max-pools (a pool is skipped once the map is one pixel: an 8x8 digit reaches
1x1 after three), then fully connected 256-256-classes; Gaussian Glorot initialisation.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.config import ModelConfig
from trainables.models.layers import dense_stack, glorot, image

# channels of each 3x3 conv, "M" = 2x2 max-pool
PLANS: dict[str, list[int | str]] = {
    "conv2": [64, 64, "M"],
    "conv4": [64, 64, "M", 128, 128, "M"],
    "conv6": [64, 64, "M", 128, 128, "M", 256, 256, "M"],
}
HIDDEN = (256, 256)  # widths of the fully connected layers after the convolutions


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
        self.classifier = dense_stack([channels * h * w, *HIDDEN], num_classes)
        self.output_name = f"classifier.{len(self.classifier) - 1}"
        glorot(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def conv(cfg: ModelConfig, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ConvNet(PLANS[cfg.name], image(cfg.name, shape), num_classes)
