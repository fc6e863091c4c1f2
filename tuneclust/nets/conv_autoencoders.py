"""Convolutional autoencoders of ICS (Das, Ghosh, Bhowmick, "Deep representation learning characterized by
inter-class separation for image clustering", WACV 2019), Sec. 4.3.

Shallow encoder: three 3x3 convolutions (stride 1, zero padding), each followed by batch norm, ReLU and a 2x2
max-pool (stride 2, zero padding), then a fully connected layer to the latent code. The deep variant adds two
convolutions. The decoder mirrors it: a fully connected layer, then transposed convolutions back to the image.
Xavier initialisation everywhere.

Decisions where the paper is silent: channel widths (``ARCH_CHANNELS``); the latent layer is linear (no BN,
no ReLU) and so is the last decoder layer (inputs are standardised, so the output is unbounded); a block only
pools while its input is at least ``MIN_POOL_SIZE`` pixels wide, so 8x8 digits pool twice (8-4-2) and 96x96
images end at 3x3, while 28x28 MNIST pools three times (28-14-7-4) as in the paper.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Arch = Literal["shallow", "deep"]
ARCH_CHANNELS: dict[str, tuple[int, ...]] = {"shallow": (32, 64, 128), "deep": (32, 64, 128, 256, 256)}
"""Output channels of the encoder convolutions (paper: 3 layers shallow, +2 deep; widths not given)."""
MIN_POOL_SIZE = 4
"""A block max-pools only when its input is at least this many pixels wide."""


def _init_xavier(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def spatial_sizes(image_size: int, n_blocks: int) -> tuple[list[int], list[bool]]:
    """Input width of every encoder block plus the final width, and whether each block pools.

    Args:
        image_size: input height = width in pixels.
        n_blocks: number of convolution blocks.

    Returns:
        (sizes, pools): ``sizes`` has ``n_blocks + 1`` widths, ``pools[i]`` tells if block ``i`` halves the size
        (ceil, as a zero-padded stride-2 pool).
    """
    sizes, pools = [image_size], []
    for _ in range(n_blocks):
        pool = sizes[-1] >= MIN_POOL_SIZE
        pools.append(pool)
        sizes.append((sizes[-1] + 1) // 2 if pool else sizes[-1])
    return sizes, pools


class ConvAutoencoder(nn.Module):
    """ICS's deep convolutional autoencoder (DCA) for square images of any size and 1 or 3 channels."""

    def __init__(self, in_channels: int, image_size: int, latent_dim: int, arch: Arch = "shallow") -> None:
        """Build the encoder and its mirror decoder.

        Args:
            in_channels: image channels (1 or 3).
            image_size: image height = width (8, 16, 28, 32, 96, ...).
            latent_dim: size of the code z.
            arch: ``shallow`` (3 conv blocks) or ``deep`` (5).
        """
        super().__init__()
        widths = ARCH_CHANNELS[arch]
        self.sizes, self.pools = spatial_sizes(image_size, len(widths))
        chans = (in_channels, *widths)
        blocks = []
        for c_in, c_out, pool in zip(chans[:-1], chans[1:], self.pools):
            layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
        self.encoder = nn.Sequential(*blocks)
        self.bottom = (widths[-1], self.sizes[-1], self.sizes[-1])
        flat = widths[-1] * self.sizes[-1] ** 2
        self.to_latent = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Sequential(
            nn.Linear(latent_dim, flat), nn.BatchNorm1d(flat), nn.ReLU(inplace=True)
        )
        rev = chans[::-1]
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 3, stride=2 if pool else 1, padding=1)
            for c_in, c_out, pool in zip(rev[:-1], rev[1:], self.pools[::-1])
        )
        self.debn = nn.ModuleList(nn.BatchNorm2d(c) for c in rev[1:-1])
        self.apply(_init_xavier)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) standardised images -> (B, latent_dim) codes."""
        return self.to_latent(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) codes -> (B, C, H, W) reconstructions (linear output)."""
        h = self.from_latent(z).view(-1, *self.bottom)
        targets = self.sizes[-2::-1]
        for i, (deconv, size) in enumerate(zip(self.deconvs, targets)):
            h = deconv(h, output_size=[size, size])
            if i < len(self.debn):
                h = torch.relu(self.debn[i](h))
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (code, reconstruction)."""
        z = self.encode(x)
        return z, self.decode(z)
