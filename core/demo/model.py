"""The small CNN that the demo benchmark trains twice (biased and balanced).

It is deliberately tiny so that a full training fits in about a minute on two
CPU cores, and it is shaped for the rest of SliceScope: the conv trunk lives in
``features`` (GradCAM hooks its 8×8 output map), followed by global average
pooling and one linear ``classifier``. No layer works in place, because an
in-place op would overwrite the activations and gradients GradCAM reads.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> list[nn.Module]:
    """3×3 conv → BatchNorm → ReLU, optionally halving the resolution."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class DemoCNN(nn.Module):
    """A four-block CNN for 64×64 RGB images with values in [0, 1].

    Inputs are not normalised: the demo images are synthetic and BatchNorm
    after the first conv absorbs their scale, so callers only divide by 255.
    ``features`` maps ``(N, 3, 64, 64)`` to ``(N, 64, 8, 8)``.
    """

    def __init__(self, num_classes: int = 4, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            # A strided 5×5 stem instead of conv + pool at full resolution:
            # it makes training ~1.6× faster on CPU and the objects span ≥ 10 px.
            nn.Conv2d(3, width, kernel_size=5, stride=2, padding=2, bias=False),  # 64 → 32
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=False),
            *_conv_block(width, 2 * width, pool=True),  # 32 → 16
            *_conv_block(2 * width, 4 * width, pool=True),  # 16 → 8
            *_conv_block(4 * width, 4 * width, pool=False),  # stays 8×8 for GradCAM
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        feature_map = self.features(images)
        return self.classifier(torch.flatten(self.pool(feature_map), 1))


def build_demo_cnn(num_classes: int = 4) -> DemoCNN:
    """Factory used as ``core.demo.model:build_demo_cnn`` when loading checkpoints."""
    return DemoCNN(num_classes=num_classes)
