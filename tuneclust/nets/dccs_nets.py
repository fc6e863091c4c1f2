"""DCCS networks: encoder Q, MI discriminator D and WGAN-GP critic C.

Zhao et al., "Deep Image Clustering with Category-Style Representation", ECCV 2020, appendix A (Tables 6-10,
Fig. 7) and the public code (github.com/sKamiJ/DCCS, ``models.py`` / ``layers.py``):

- ``conv``: Table 6 (MNIST/FMNIST, 28x28): two 4x4 stride-2 convs (64, 128) + BN + lReLU(0.2), Dense 1024 + BN
  + lReLU, Dense to (zc logits, zs). ``a`` = the flattened output of the last conv.
- ``resnet32``: Table 7 (CIFAR-10): pre-activation ResBlocks down w, 2w, 4w, a ResBlock 4w, BN, ReLU, global
  average pool, Dense; w = 128. ``resnet96``: Table 8 (STL-10, ImageNet-10): down w..8w, ResBlock 8w; w = 64.
  ``a`` = the flattened output of the second-last ResBlock (appendix A). The first block is the public code's
  ``OptimizedResBlockDown`` (conv, BN, ReLU, conv, avg-pool; no pre-activation on the raw image).
- ``small``: not in the paper; for the 8x8 digits: conv 3x3 (32) + BN + lReLU, conv 4x4 stride 2 (64) + BN +
  lReLU, Dense 256 + BN + lReLU, Dense. ``a`` = the flattened output of the last conv.
- Critic (Table 9) and discriminator (Table 10): Dense h, lReLU, Dense h/2, lReLU, Dense 1 (h = 1024).

Every encoder adapts to the input size and channel count (flattened sizes are measured with a dummy forward;
the residual nets end with a global average pool). Init as the public code: Xavier-normal weights, zero biases.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

EncoderName = Literal["auto", "small", "conv", "resnet32", "resnet96"]
SLOPE = 0.2  # lReLU slope of every architecture (appendix A)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResBlock(nn.Module):
    """Pre-activation ResBlock (Fig. 7): BN, ReLU, conv3x3, BN, ReLU, conv3x3 [, 2x2 avg-pool]; 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, down: bool) -> None:
        super().__init__()
        pool: nn.Module = nn.AvgPool2d(2) if down else nn.Identity()
        self.block = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            pool,
        )
        needs_proj = down or c_in != c_out
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1), pool) if needs_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


class FirstResBlockDown(nn.Module):
    """The public code's ``OptimizedResBlockDown``: conv, BN, ReLU, conv, pool; shortcut pool then 1x1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.AvgPool2d(2),
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.shortcut(x)


def _conv_bn(c_in: int, c_out: int, k: int, stride: int, pad: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, pad, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(SLOPE)]


def _dense_bn(d_in: int, d_out: int) -> list[nn.Module]:
    return [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.LeakyReLU(SLOPE)]


class Encoder(nn.Module):
    """Q: image -> (zc logits (B, K), zs (B, S), a (B, A)); ``features`` gives ``a``, ``head`` the rest."""

    def __init__(self, features: nn.Module, head: nn.Module, num_clusters: int, style_dim: int) -> None:
        super().__init__()
        self.features, self.head = features, head
        self.num_clusters, self.style_dim = num_clusters, style_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = self.features(x)
        a = feat.flatten(1)
        out = self.head(feat)
        return out[:, : self.num_clusters], out[:, self.num_clusters :], a


def _flat_size(net: nn.Module, channels: int, size: int) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(net.eval()(torch.zeros(2, channels, size, size)).shape[1:])


def _conv_encoder(channels: int, size: int, out_dim: int, small: bool) -> tuple[nn.Module, nn.Module]:
    if small:  # digits (8x8): keeps the spatial map at size/2
        layers = _conv_bn(channels, 32, 3, 1, 1) + _conv_bn(32, 64, 4, 2, 1)
        hidden = 256
    else:  # Table 6: valid 4x4 stride-2 convs, 28 -> 13 -> 5
        layers = _conv_bn(channels, 64, 4, 2, 0) + _conv_bn(64, 128, 4, 2, 0)
        hidden = 1024
    features = nn.Sequential(*layers)
    flat = int(torch.tensor(_flat_size(features, channels, size)).prod())
    head = nn.Sequential(nn.Flatten(), *_dense_bn(flat, hidden), nn.Linear(hidden, out_dim))
    return features, head


def _res_encoder(channels: int, out_dim: int, width: int, n_down: int) -> tuple[nn.Module, nn.Module]:
    blocks: list[nn.Module] = [FirstResBlockDown(channels, width)]
    c = width
    for _ in range(n_down - 1):
        blocks.append(ResBlock(c, 2 * c, down=True))
        c *= 2
    head = nn.Sequential(
        ResBlock(c, c, down=False),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, out_dim),
    )
    return nn.Sequential(*blocks), head


def resolve_encoder(name: EncoderName, size: int) -> str:
    """``auto``: small below 16 px, conv below 32 px, resnet32 below 64 px, resnet96 from 64 px."""
    if name != "auto":
        return name
    if size < 16:
        return "small"
    if size < 32:
        return "conv"
    return "resnet32" if size < 64 else "resnet96"


def build_encoder(
    name: EncoderName, channels: int, size: int, num_clusters: int, style_dim: int, width: int | None = None
) -> Encoder:
    """Build Q for ``channels`` x ``size`` x ``size`` images.

    Args:
        name: architecture, or ``auto`` to pick by image size (see :func:`resolve_encoder`).
        channels: input channels (1 for grayscale).
        size: input height = width.
        num_clusters: K, the size of zc.
        style_dim: the size of zs (0 allowed).
        width: base channel count of the residual nets (default: the paper's 128 for resnet32, 64 for resnet96).

    Returns:
        The encoder, Xavier-initialised.
    """
    arch = resolve_encoder(name, size)
    out_dim = num_clusters + style_dim
    if arch in ("small", "conv"):
        features, head = _conv_encoder(channels, size, out_dim, small=arch == "small")
    elif arch == "resnet32":
        features, head = _res_encoder(channels, out_dim, width or 128, n_down=3)
    elif arch == "resnet96":
        features, head = _res_encoder(channels, out_dim, width or 64, n_down=4)
    else:
        raise ValueError(f"unknown DCCS encoder {name!r}")
    enc = Encoder(features, head, num_clusters, style_dim)
    _init(enc)
    return enc.train()


def activation_dim(encoder: Encoder, channels: int, size: int) -> int:
    """Size of the flattened intermediate activation ``a`` fed to the discriminator."""
    was_training = encoder.training
    with torch.no_grad():
        p = next(encoder.parameters())
        a = encoder.eval()(torch.zeros(2, channels, size, size, device=p.device))[2]
    encoder.train(was_training)
    return int(a.shape[1])


def _mlp(d_in: int, hidden: int) -> nn.Sequential:
    net = nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.LeakyReLU(SLOPE),
        nn.Linear(hidden, hidden // 2),
        nn.LeakyReLU(SLOPE),
        nn.Linear(hidden // 2, 1),
    )
    _init(net)
    return net


class Critic(nn.Module):
    """C: z -> scalar score (Table 9); returns shape (B,)."""

    def __init__(self, z_dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.net = _mlp(z_dim, hidden)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


class Discriminator(nn.Module):
    """D: (a, z) -> logit that z was encoded from the image behind a (Table 10); returns shape (B,)."""

    def __init__(self, a_dim: int, z_dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.net = _mlp(a_dim + z_dim, hidden)

    def forward(self, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, z], dim=1)).squeeze(1)
