"""Dense autoencoder of DEC (Xie, Girshick, Farhadi, ICML 2016), as used by CDC (Trinh & Pham, Sec. 3.1).

Encoder ``D -> 500 -> 500 -> 2000 -> d`` with ReLU between layers and a linear embedding; the decoder mirrors it
(``d -> 2000 -> 500 -> 500 -> D``) and ends with a linear layer (CDC public code, ``autoencoder_dense``). Images are
flattened; vector (feature) data is taken as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Init = Literal["dec_uniform", "glorot_uniform"]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers through ``sizes`` with ReLU between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def init_dense(module: nn.Module, init: Init) -> None:
    """Keras-style initialisation of every ``nn.Linear`` in ``module``; biases zero (Keras default).

    Args:
        module: the network.
        init: ``dec_uniform`` = VarianceScaling(1/3, fan_in, uniform), i.e. U(+-sqrt(1/fan_in)) (DEC; CDC public
            code for FMNIST and Reuters); ``glorot_uniform`` = Xavier uniform (CDC public code for STL-10/CIFAR-10).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if init == "dec_uniform":
                bound = math.sqrt(1.0 / m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class DenseAutoencoder(nn.Module):
    """Fully connected autoencoder ``in_dim -> dims[0] -> ... -> dims[-1]`` and its mirror.

    Args:
        in_dim: input dimension D (C*H*W for images).
        dims: hidden sizes ending with the embedding size d (DEC/CDC: 500, 500, 2000, 10).
        init: weight initialisation, see :func:`init_dense`.
    """

    def __init__(
        self, in_dim: int, dims: Sequence[int] = (500, 500, 2000, 10), init: Init = "dec_uniform"
    ) -> None:
        super().__init__()
        sizes = [int(in_dim), *[int(d) for d in dims]]
        self.encoder = _mlp(sizes)
        self.decoder = _mlp(sizes[::-1])
        init_dense(self, init)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, d); anything past the batch axis is flattened."""
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B, D) reconstruction (linear output)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the embedding Z and the reconstruction X'."""
        z = self.encode(x)
        return z, self.decode(z)
