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

from bisect import bisect_right
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from tuneclust.data import augment as A
from tuneclust.losses.idfd import idfd_loss, init_bank, update_bank, variant_weights
from tuneclust.methods.base import Evaluation, Method, MethodConfig
from tuneclust.nets.backbones import build_backbone


class IDFDConfig(MethodConfig):
    """IDFD hyperparameters and toggles; each default with its source."""

    variant: Literal["id", "idfo", "idfd"] = "idfd"
    """Loss: L_I only, L_I + alpha L_FO, or L_I + alpha L_F (paper Eq. 2, 7, 6; Table 1 ablation)."""
    backbone: Literal["resnet18", "resnet34", "vgg16", "convnet"] = "resnet18"
    """Paper App. A: ResNet18 with the CIFAR stem; Table 2 adds ConvNet, VGG16, ResNet34."""
    feature_dim: int = Field(128, ge=2)
    """d, the feature size (App. A, after Wu et al. 2018)."""
    tau: float = Field(1.0, gt=0)
    """Temperature of L_I (Sec. 4: 1 for ID(tuned)/IDFO/IDFD; 0.07 is ID(original); Fig. 3 sweep)."""
    tau2: float = Field(2.0, gt=0)
    """Temperature of L_F (Sec. 4; Fig. 4 sweep)."""
    alpha: float = Field(1.0, ge=0)
    """Weight of the feature term: 1 for IDFD; IDFO used 10 (CIFAR) and 0.5 (STL-10, ImageNet subsets) (App. A)."""
    lr: float = Field(0.03, gt=0)
    """SGD learning rate (App. A; public code)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (App. A)."""
    weight_decay: float = Field(5e-4, ge=0)
    """SGD weight decay (public code)."""
    batch_size: int = Field(128, ge=2)
    """B (App. A)."""
    lr_milestones: list[int] = [600, 950, 1300, 1650]
    """Epochs at which the lr is multiplied by lr_gamma (public code; App. A: after 600, every 350)."""
    lr_gamma: float = Field(0.1, gt=0, le=1)
    """lr decay factor (App. A)."""
    bank_momentum: float = Field(0.5, ge=0, lt=1)
    """Memory bank update M_i <- normalize(m M_i + (1 - m) f_i) (public code: 0.5)."""
    aug_crop: bool = True
    """RandomResizedCrop (public code; Fig. 11 toggle)."""
    aug_crop_scale: float = Field(0.2, gt=0, le=1)
    """Smallest crop area fraction (public code: scale (0.2, 1))."""
    aug_color: bool = True
    """ColorJitter (public code; Fig. 11 toggle)."""
    aug_color_strength: float = Field(0.4, ge=0)
    """Brightness = contrast = saturation jitter (public code: 0.4 each, no hue)."""
    aug_gray: bool = True
    """RandomGrayscale (public code; Fig. 11 toggle)."""
    aug_gray_p: float = Field(0.2, ge=0, le=1)
    """Probability of graying (public code: 0.2)."""
    aug_flip: bool = True
    """RandomHorizontalFlip (paper App. C.3 / Fig. 11 and Wu et al. 2018; the public IDFD script omits it)."""
    embed: Literal["model", "memory"] = "model"
    """What k-means clusters: clean eval-mode features (methods.md) or the memory bank (public code)."""
    max_steps_per_epoch: int | None = Field(None, ge=1)
    """Cap on optimisation steps per epoch (None: a full pass). For smoke runs and quick looks only."""

    def weights(self) -> dict[str, float]:
        """``variant`` and ``alpha`` as term weights (Table 1: ID, IDFO, IDFD)."""
        return variant_weights(self.variant, self.alpha)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``: ``lr`` times ``lr_gamma`` per milestone reached (App. A)."""
        return self.lr * self.lr_gamma ** bisect_right(sorted(self.lr_milestones), epoch)


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

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The public code's pipeline (crop, colour jitter, grayscale) plus flip, each a toggle; on the device."""
        c, g = self.cfg, self.generator
        if c.aug_crop:
            x = A.random_resized_crop(x, scale=(c.aug_crop_scale, 1.0), ratio=(3 / 4, 4 / 3), generator=g)
        if c.aug_color:
            s = c.aug_color_strength
            x = A.color_jitter(x, brightness=s, contrast=s, saturation=s, generator=g)
        if c.aug_gray:
            x = A.random_grayscale(x, p=c.aug_gray_p, generator=g)
        if c.aug_flip:
            x = A.horizontal_flip(x, p=0.5, generator=g)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised features of images in [0, 1] (normalised with the dataset's mean/std first)."""
        return F.normalize(self.net((x - self._mean) / self._std).float(), dim=1)

    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Augment, embed, IDFD loss against the pre-update bank, SGD step, bank update."""
        c = self.cfg
        f = self.embed(self.augment(self.x[idx]))
        out = idfd_loss(f, self.bank, idx, tau=c.tau, tau2=c.tau2, weights=c.weights())
        self.descend("sgd", out.total)
        update_bank(self.bank, f.detach(), idx, momentum=c.bank_momentum)
        return out.logged()

    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Features of the clean images in eval mode (``embed: model``) or the memory bank (``embed: memory``)."""
        z = self.bank if self.cfg.embed == "memory" else self.map_chunks(self.embed, self.x)
        return Evaluation(embedding=z.float().cpu().numpy())
