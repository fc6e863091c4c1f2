"""Backbone registry: a plain dict from name to constructor ``(in_channels, out_dim) -> nn.Module``.

Every backbone ends in a global average pool, so it accepts any image size (8x8 digits to 96x96 STL-10), and
exposes ``feature_dim``, the width of its pooled features (the output width when ``out_dim`` is None).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tuneclust.nets.convnet import convnet
from tuneclust.nets.resnet import resnet18, resnet34
from tuneclust.nets.vgg import vgg16

BACKBONES: dict[str, Callable[[int, int | None], nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "vgg16": vgg16,
    "convnet": convnet,
}


def build_backbone(name: str, in_channels: int, out_dim: int | None) -> nn.Module:
    """Build a registered backbone.

    Args:
        name: one of :data:`BACKBONES`.
        in_channels: image channels (1 or 3).
        out_dim: width of the final linear layer; None for the pooled features.

    Returns:
        The network, mapping (B, in_channels, H, W) to (B, out_dim or feature_dim).

    Raises:
        KeyError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name](in_channels, out_dim)
