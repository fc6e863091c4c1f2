"""A small ConvNet, the "ConvNet" row of IDFD Table 2 (Tao, Takagi, Nakata, ICLR 2021).

IDFD cites the ConvNet of DCCM (Wu et al., ICCV 2019) without listing its layers; DCCM follows DAC (Chang et
al., ICCV 2017), a plain stack of 3x3 conv + BN + ReLU blocks with max-pools. We use that shape at a small
width: 64-64-M-128-128-M-256-M, a global average pool and a linear layer, which runs on 8x8 to 96x96 inputs.
"""

from __future__ import annotations

from tuneclust.nets.vgg import PooledConvNet

CONVNET_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, "M")


def convnet(in_channels: int = 3, out_dim: int | None = 128) -> PooledConvNet:
    """The small ConvNet.

    Args:
        in_channels: image channels (1 or 3).
        out_dim: size of the final linear layer; None returns the 256-d pooled features.

    Returns:
        A module mapping (B, in_channels, H, W) to (B, out_dim) (unnormalised).
    """
    return PooledConvNet(CONVNET_CFG, in_channels, out_dim)
