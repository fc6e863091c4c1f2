"""VGG16 with batch norm (Simonyan & Zisserman 2015), adapted to small images, for IDFD Table 2.

The IDFD paper runs VGG16 on CIFAR-10 without giving its head. We use the common CIFAR form: the thirteen 3x3
conv layers of VGG16 with BN + ReLU, max-pools with ``ceil_mode`` (a 1x1 map stays 1x1, so 8x8 digits pass all
five pools), a global average pool and one linear layer to ``out_dim`` instead of the 4096-wide classifier.
"""

from __future__ import annotations

import torch
from torch import nn

VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def conv_stack(cfg: tuple[int | str, ...], in_channels: int) -> nn.Sequential:
    """Conv3x3-BN-ReLU layers of the given widths; "M" is a 2x2 max-pool that keeps a 1x1 map (ceil mode)."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        else:
            layers += [
                nn.Conv2d(c, int(v), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(v)),
                nn.ReLU(inplace=True),
            ]
            c = int(v)
    return nn.Sequential(*layers)


class PooledConvNet(nn.Module):
    """A conv stack, a global average pool and an optional linear head."""

    def __init__(self, cfg: tuple[int | str, ...], in_channels: int, out_dim: int | None) -> None:
        super().__init__()
        self.features = conv_stack(cfg, in_channels)
        self.feature_dim = int([v for v in cfg if v != "M"][-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(self.feature_dim, out_dim) if out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def vgg16(in_channels: int = 3, out_dim: int | None = 128) -> PooledConvNet:
    """VGG16-BN for any input size >= 1 px.

    Args:
        in_channels: image channels (1 or 3).
        out_dim: size of the final linear layer; None returns the 512-d pooled features.

    Returns:
        A module mapping (B, in_channels, H, W) to (B, out_dim) (unnormalised).
    """
    return PooledConvNet(VGG16_CFG, in_channels, out_dim)
