"""IDFD: instance discrimination and feature decorrelation (Tao, Takagi, Nakata, ICLR 2021).

A backbone maps augmented images to L2-normalised d-dim features trained with ``L = L_I + alpha * L_F``
(variants ``id``/``idfo``/``idfd``, see :mod:`tuneclust.losses.idfd`) against a memory bank of all N instances;
clustering is k-means on the features (done by the metrics layer). Defaults follow methods.md (IDFD section),
the paper (Sec. 4, App. A) and its public code (github.com/TTN-YKK/Clustering_friendly_representation_learning).

Epochs (the base's loop): one pass over a seeded permutation in batches of ``batch_size``; the last partial batch
is kept (as the public code's DataLoader does) unless it holds a single image (BatchNorm cannot train on one 1x1
map and L_F's column normalisation is degenerate). The lr follows ``lr_milestones``/``lr_gamma`` from the config.

Logged terms: ``loss`` (the weighted total), ``loss_instance`` (L_I), and ``loss_decorrelation`` (L_F, ``idfd``)
or ``loss_orthogonal`` (L_FO, ``idfo``); ``lr`` is the learning rate of the epoch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from tuneclust.data import augment as A
from tuneclust.losses.idfd import idfd_loss, init_bank, update_bank
from tuneclust.methods.base import Evaluation, Method, MethodConfig
from tuneclust.methods.configs import IDFDConfig
from tuneclust.nets.backbones import build_backbone


class IDFD(Method):
    """Instance discrimination + feature decorrelation with a memory bank; k-means on the features."""

    name: ClassVar[str] = "idfd"
    Config: ClassVar[type[MethodConfig]] = IDFDConfig
    smoke_overrides: ClassVar[dict[str, Any]] = {"batch_size": 64, "max_steps_per_epoch": 4}
    state_attrs: ClassVar[tuple[str, ...]] = ("bank",)
    cfg: IDFDConfig

    def build(self) -> None:
        cfg, data = self.cfg, self.data
        if not data.is_image:
            raise ValueError(
                f"IDFD needs images (N, C, H, W); dataset {data.name!r} has shape {tuple(data.x.shape)}"
            )
        self.x = data.x.to(self.device)
        self.net = self.add_net("net", build_backbone(cfg.backbone, data.channels, cfg.feature_dim))
        self.bank = init_bank(len(data), cfg.feature_dim, self.generator)
        self.add_optimizer(
            "sgd",
            "sgd",
            self.net.parameters(),
            lambda c: {"lr": c.lr, "momentum": c.momentum, "weight_decay": c.weight_decay},
            schedule=lambda c, epoch: c.lr_at(epoch),
        )
        self._mean = torch.tensor(data.mean, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(data.std, device=self.device).view(1, -1, 1, 1)
        self._forward = self.runtime.compile_fn(self.forward_loss)

    def draw_augment(self, n: int) -> dict[str, Any]:
        """The random parameters of the augmentation of ``n`` images (the public code's pipeline: crop, colour
        jitter, grayscale, plus flip, each a toggle), drawn from the trial's generator in that order; applied by
        :func:`tuneclust.data.augment.apply_drawn`."""
        c, g = self.cfg, self.generator
        channels, height, width = self.x.shape[1:]
        params: dict[str, Any] = {}
        if c.aug_crop:
            params["crop"] = A.sample_boxes(
                n, height, width, scale=(c.aug_crop_scale, 1.0), ratio=(3 / 4, 4 / 3), generator=g
            )
        if c.aug_color:
            s = c.aug_color_strength
            params["jitter"] = A.draw_color_jitter(
                n, channels=channels, brightness=s, contrast=s, saturation=s, generator=g
            )
        if c.aug_gray:
            params["gray"] = A.coin(n, c.aug_gray_p, g)
        if c.aug_flip:
            params["flip"] = A.coin(n, 0.5, g)
        return params

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """One random augmentation of each image (draw, then apply)."""
        return A.apply_drawn(x, self.draw_augment(len(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised features of images in [0, 1] (normalised with the dataset's mean/std first)."""
        return F.normalize(self.net((x - self._mean) / self._std).float(), dim=1)

    def forward_loss(
        self,
        x: torch.Tensor,
        params: dict[str, Any],
        bank: torch.Tensor,
        idx: torch.Tensor,
        hp: dict[str, Any],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Augment (drawn ``params``), embed, IDFD loss against ``bank``: the step's pure part, which the runtime
        compiles as one graph (:meth:`tuneclust.runtime.Runtime.compile_fn`). Returns the features and the terms."""
        f = self.embed(A.apply_drawn(x, params))
        out = idfd_loss(f, bank, idx, tau=hp["tau"], tau2=hp["tau2"], weights=hp["weights"])
        return f, out.logged()

    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Draw the augmentation, the compiled forward and loss against the pre-update bank, SGD step, bank
        update."""
        c = self.cfg
        hp = {"tau": c.tau, "tau2": c.tau2, "weights": c.weights()}
        f, terms = self._forward(self.x[idx], self.draw_augment(idx.numel()), self.bank, idx, hp)
        self.descend("sgd", terms["loss"])
        update_bank(self.bank, f.detach(), idx, momentum=c.bank_momentum)
        return terms

    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Features of the clean images in eval mode (``embed: model``) or the memory bank (``embed: memory``)."""
        z = self.bank if self.cfg.embed == "memory" else self.map_chunks(self.embed, self.x)
        return Evaluation(embedding=z.float().cpu().numpy())
