"""ResNet18/34 with the CIFAR stem, as in the public IDFD code (Tao, Takagi, Nakata, ICLR 2021).

The public code builds torchvision's ``ResNet(BasicBlock, [2, 2, 2, 2], low_dim)`` and swaps the ImageNet stem
(7x7 conv stride 2 + max-pool) for a 3x3 conv with stride 1 and no max-pool. We do the same, with the input
channel count as a parameter. The network ends with a global average pool, so every input size works: 8x8
digits (layer4 sees 1x1), 28x28, 32x32 and 96x96. For 96x96 images (STL-10, ImageNet subsets) the CIFAR stem is
kept, as in the public code, which runs the residual stages at 96/48/24/12 px (slower than an ImageNet stem).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

_LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}
FEATURE_DIM = 512
"""Width of the pooled features (input of the final linear layer)."""


def _cifar_resnet(layers: list[int], in_channels: int, out_dim: int | None) -> ResNet:
    net = ResNet(BasicBlock, layers, num_classes=out_dim or 1)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    if out_dim is None:
        net.fc = nn.Identity()
    net.feature_dim = FEATURE_DIM
    return net


def resnet18(in_channels: int = 3, out_dim: int | None = 128) -> ResNet:
    """ResNet18 with the CIFAR stem.

    Args:
        in_channels: image channels (1 or 3).
        out_dim: size of the final linear layer; None returns the 512-d pooled features.

    Returns:
        A module mapping (B, in_channels, H, W) to (B, out_dim) (unnormalised).
    """
    return _cifar_resnet(_LAYERS["resnet18"], in_channels, out_dim)


def resnet34(in_channels: int = 3, out_dim: int | None = 128) -> ResNet:
    """ResNet34 with the CIFAR stem (IDFD Table 2). Arguments as :func:`resnet18`."""
    return _cifar_resnet(_LAYERS["resnet34"], in_channels, out_dim)
