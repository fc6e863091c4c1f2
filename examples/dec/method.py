"""DEC: Deep Embedded Clustering (Xie, Girshick, Farhadi, ICML 2016), written against tuneclust's public contract only.

A worked example of a method that lives outside the package: ``method: examples.dec.method:DEC`` in a spec run from
the repository root. It imports nothing but the public API (README "Your own method"): ``tuneclust.methods``
(Method, MethodConfig, Evaluation), ``tuneclust.losses.terms`` (combine, fp32, reconstruction_loss) and
``tuneclust.losses.dec`` (Student-t soft assignment, sharpened target, KL).

Two phases in one run of ``budget.epochs``:

1. ``pretrain_epochs`` epochs of autoencoder pretraining (mean squared reconstruction error, Adam). The paper
   pretrains a stacked denoising autoencoder layer by layer, then end to end, with SGD; this example pretrains end
   to end only, with Adam as the public DEC-Keras and IDEC code do.
2. Clustering: centres initialised by k-means on the embedding (``kmeans_init_n_init`` restarts), then SGD on
   ``kl_weight * KL(P || Q) + recon_weight * L_r`` where Q are Student-t soft assignments (Eq. 1) and P the sharpened
   target (Eq. 3), recomputed over the whole dataset every ``update_interval`` epochs. ``recon_weight: 0`` is DEC;
   a positive one keeps the decoder in the loss (IDEC, Guo et al. 2017, used 0.1 relative to KL): the ablation
   ``examples/dec/dec_digits.yaml`` compares both.

Logged terms: ``loss``, ``loss_recon`` and, in the clustering phase, ``loss_kl``; ``lr`` is the learning rate in force.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from sklearn.cluster import KMeans
from torch import nn

from tuneclust.losses.dec import kl_divergence, soft_assign, target_distribution
from tuneclust.losses.terms import LossTerms, combine, fp32, reconstruction_loss
from tuneclust.methods import Evaluation, Method, MethodConfig


class DECConfig(MethodConfig):
    """DEC hyperparameters; each default with its source."""

    dims: list[int] = [500, 500, 2000, 10]
    """Encoder sizes ending with the embedding size (paper Sec. 4.3: d-500-500-2000-10, decoder mirrored)."""
    pretrain_epochs: int = Field(30, ge=0)
    """Epochs of autoencoder pretraining before clustering (the paper: 50k layer-wise + 100k end-to-end iterations)."""
    pretrain_lr: float = Field(1e-3, gt=0)
    """Adam learning rate of pretraining (DEC-Keras and IDEC code; the paper: SGD 0.1 on layer-wise stacks)."""
    lr: float = Field(0.01, gt=0)
    """SGD learning rate of the clustering phase (paper Sec. 4.3: 0.01); the key PBT mutates."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (paper Sec. 4.3)."""
    batch_size: int = Field(256, ge=2)
    """Minibatch size (paper Sec. 4.3: 256)."""
    alpha: float = Field(1.0, gt=0)
    """Degrees of freedom of the Student-t kernel (paper Eq. 1: 1)."""
    kl_weight: float = Field(1.0, ge=0)
    """Weight of KL(P || Q), DEC's clustering loss (Eq. 2)."""
    recon_weight: float = Field(0.0, ge=0)
    """Weight of the reconstruction term during clustering: 0 is DEC; IDEC (Guo et al. 2017) keeps it."""
    update_interval: int = Field(1, ge=1)
    """Epochs between recomputations of the target P over the whole dataset (the paper: every T iterations)."""
    kmeans_init_n_init: int = Field(20, ge=1)
    """k-means restarts of the centre initialisation (paper Sec. 3.2: 20)."""
    max_steps_per_epoch: int | None = Field(None, ge=1)
    """Cap on optimisation steps per epoch (None: a full pass). For smoke runs only."""

    def weights(self) -> dict[str, float]:
        """The clustering phase's loss-term weights (pretraining is ``{"recon": 1}``)."""
        return {"kl": self.kl_weight, "recon": self.recon_weight}


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """Dense encoder ``D -> dims`` and its mirror, ReLU between layers, linear embedding and output."""

    def __init__(self, in_dim: int, dims: list[int]) -> None:
        super().__init__()
        self.encoder = _mlp([in_dim, *dims])
        self.decoder = _mlp([*reversed(dims), in_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)


class Centres(nn.Module):
    """The K cluster centres, trained with the encoder in the clustering phase."""

    def __init__(self, k: int, d: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(k, d))


@fp32  # under a bf16/fp16 runtime the networks run in low precision, the loss in fp32 (tuneclust's rule)
def dec_loss(
    z: torch.Tensor, x_rec: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, p: torch.Tensor | None,
    alpha: float, weights: dict[str, float],
) -> LossTerms:  # fmt: skip
    """``weights["kl"] * KL(P || Q) + weights["recon"] * L_r`` (a term with weight 0 is neither computed nor logged)."""
    return combine(
        weights,
        {
            "kl": lambda: kl_divergence(p, soft_assign(z, mu, alpha)),
            "recon": lambda: reconstruction_loss(x_rec, x),
        },
    )


class DEC(Method):
    """Autoencoder pretraining, then KL to the sharpened target of Student-t soft assignments."""

    name: ClassVar[str] = "dec"
    Config: ClassVar[type[MethodConfig]] = DECConfig
    smoke_overrides: ClassVar[dict[str, Any]] = {"pretrain_epochs": 1, "max_steps_per_epoch": 4}
    state_attrs: ClassVar[tuple[str, ...]] = ("p",)
    cfg: DECConfig

    def build(self) -> None:
        c = self.cfg
        self.x = self.data.x.flatten(1).to(self.device)
        self.ae = self.add_net("ae", Autoencoder(self.x.shape[1], c.dims))
        self.centres = self.add_net("centres", Centres(self.data.num_classes, c.dims[-1]), entry_points=())
        params = [*self.ae.parameters(), *self.centres.parameters()]
        # first registered: its lr is the one `lr` sets (README: the base reports the first optimiser's lr)
        self.add_optimizer("sgd", "sgd", params, lambda c: {"lr": c.lr, "momentum": c.momentum})
        self.add_optimizer("pretrain", "adam", self.ae.parameters(), lambda c: {"lr": c.pretrain_lr})
        self.p: torch.Tensor | None = None

    @property
    def clustering(self) -> bool:
        return self.epoch >= self.cfg.pretrain_epochs

    def progress(self) -> dict[str, float]:
        """The learning rate in force: Adam's while pretraining, then the clustering SGD's (``lr``)."""
        opt = self.optimizers["sgd" if self.clustering else "pretrain"].optimizer
        return {"lr": float(opt.param_groups[0]["lr"]), "clustering": float(self.p is not None)}

    def on_epoch_start(self) -> None:
        """At the first clustering epoch, centres from k-means; every ``update_interval`` epochs, a new target."""
        if not self.clustering:
            return
        k = self.epoch - self.cfg.pretrain_epochs
        if k == 0 and self.p is None:
            z = self.map_chunks(lambda x: self.ae(x)[0], self.x).cpu().numpy()
            km = KMeans(self.data.num_classes, n_init=self.cfg.kmeans_init_n_init, random_state=self.cfg.seed)
            km.fit(z.astype(np.float64))
            with torch.no_grad():
                self.centres.mu.copy_(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
        if self.p is None or k % self.cfg.update_interval == 0:
            self.p = target_distribution(self.soft_assignments())

    def soft_assignments(self) -> torch.Tensor:
        """Q over the whole dataset, in eval mode."""
        mu = self.centres.mu.detach()
        return self.map_chunks(lambda x: soft_assign(self.ae(x)[0].float(), mu, self.cfg.alpha), self.x)

    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.x[idx]
        z, x_rec = self.ae(x)
        if self.clustering:
            weights = self.cfg.weights()
            out = dec_loss(z, x_rec, x, self.centres.mu, self.p[idx], self.cfg.alpha, weights)
        else:
            out = dec_loss(z, x_rec, x, self.centres.mu, None, self.cfg.alpha, {"recon": 1.0})
        self.descend("sgd" if self.clustering else "pretrain", out.total)
        return out.logged()

    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """The embedding; in the clustering phase also each sample's most likely centre (argmax Q)."""
        z = self.map_chunks(lambda x: self.ae(x)[0], self.x)
        assignment = self.soft_assignments().argmax(dim=1).cpu().numpy() if self.p is not None else None
        return Evaluation(embedding=z.cpu().numpy(), assignment=assignment)
