"""DCCS: Deep Clustering with Category-Style representation (Zhao et al., ECCV 2020).

The encoder Q maps an image to z = (softmax(zc logits), zs). Three terms train it (Eq. 12):
beta_MI * L_MI (a discriminator D on (a, z), jointly optimised with Q), beta_Aug * L_Aug (zc invariant to
augmentation) and beta_Adv * L_Adv (a WGAN-GP critic C pulls the aggregate of z to the prior). Algorithm 1:
n_critic critic steps, each on a fresh batch, then one encoder step; the assignment is argmax zc.

Decisions where the paper is silent (methods.md wins where it speaks):
- An epoch is one pass over a seeded permutation in batches (last partial batch dropped, public code); batches
  cycle as n_critic critic batches then one encoder batch, the cycle running across epochs (public code). With
  ``adv`` off the critic batches are skipped, so every arm makes the same number of encoder steps per epoch.
- Images are normalised with mean 0.5, std 0.5 (public code); ``normalize: dataset`` uses the data's stats.
- ``image_mode: gray`` grays 3-channel images after augmentation (crop, flip, channel shuffle, colour jitter);
  the public code jitters after graying.
- A term switched off is not computed and is logged as 0.0; with ``adv`` off there are no critic steps,
  ``loss_critic``/``loss_gp`` are 0.0 and the scores ``critic_loss``/``w_distance`` are absent.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from tuneclust.data import augment as A
from tuneclust.data.registry import Dataset
from tuneclust.losses import dccs as L
from tuneclust.methods.base import Evaluation, Method, MethodConfig, NonFiniteLossError
from tuneclust.nets.dccs_nets import Critic, Discriminator, EncoderName, activation_dim, build_encoder

EVAL_BATCH = 1024
EVAL_SEED_OFFSET = 7919
"""Prior samples for ``w_distance`` come from their own generator (seed + this), not the training stream."""
TERMS = ("mi", "aug", "adv")
LOGGED = ("loss", "loss_mi", "loss_aug", "loss_adv", "loss_critic", "loss_gp")


class DCCSConfig(MethodConfig):
    """DCCS hyperparameters; every default with its source."""

    style_dim: int = Field(50, ge=0)
    """Size of the style code zs (Sec. 4.1.3; Fig. 6 sweeps 0..70; 0: z = zc)."""
    prior_sigma: float = Field(0.1, gt=0)
    """Std of the Gaussian prior on zs (Sec. 3.3 / 4.1.3)."""
    mi: bool = True
    """Table 5 toggle: the MI term L_MI (M1: adv; M2: adv+mi; M3: adv+aug; M4: all)."""
    aug: bool = True
    """Table 5 toggle: the augmentation-invariance term L_Aug."""
    adv: bool = True
    """Table 5 toggle: the adversarial prior term L_Adv (WGAN-GP critic)."""
    beta_mi: float = Field(0.5, ge=0)
    """Weight of L_MI in the encoder objective (Sec. 4.1.3)."""
    beta_aug: float = Field(4.0, ge=0)
    """Weight of L_Aug (Sec. 4.1.3: 4 for CIFAR/STL/ImageNet; specs set 2 for MNIST/FMNIST)."""
    beta_adv: float = Field(1.0, ge=0)
    """Weight of L_Adv in the encoder objective (Sec. 4.1.3)."""
    aug_detach_target: bool = False
    """methods.md: the public code does not detach Q(zc|x)"""
    lambda_gp: float = Field(10.0, ge=0)
    """Gradient-penalty weight lambda of the WGAN-GP critic (Sec. 4.1.3)."""
    n_critic: int = Field(4, ge=1)
    """Critic steps per encoder step, each on a fresh batch (Sec. 4.1.3)."""
    lr: float = Field(1e-4, gt=0)
    """Adam learning rate of both optimisers (Sec. 4.1.3)."""
    adam_beta1: float = Field(0.5, ge=0, lt=1)
    """Adam beta1 (Sec. 4.1.3)."""
    adam_beta2: float = Field(0.9, ge=0, lt=1)
    """Adam beta2 (Sec. 4.1.3)."""
    batch_size: int = Field(64, ge=2)
    """Batch size (Sec. 4.1.3)."""
    image_mode: Literal["gray", "rgb"] = "gray"
    """Sec. 4.1.1 (as IIC); Table 15 compares rgb"""
    normalize: Literal["half", "dataset"] = "half"
    """public code: Normalize(0.5, 0.5)"""
    encoder: EncoderName = "auto"
    """appendix A, by image size (see nets.dccs_nets)"""
    width: int | None = Field(None, ge=4)
    """residual base width; None: Tables 7/8 (128 / 64)"""
    mlp_hidden: int = Field(1024, ge=2)
    """Tables 9/10: critic and D hidden sizes h, h/2"""
    crop: bool = True
    """appendix B (1): random resized crop"""
    crop_scale_min: float = Field(0.4, gt=0, le=1)
    """appendix B: area in [40%, 100%]"""
    hflip: bool = True
    """appendix B (2); public code: off for MNIST only (specs set it)"""
    color_jitter: bool = True
    """appendix B (3)"""
    jitter: float = Field(0.4, ge=0, le=1)
    """appendix B: brightness/contrast/saturation factor in [0.6, 1.4]"""
    jitter_hue: float = Field(0.125, ge=0, le=0.5)
    """appendix B: hue in [0.875, 1.125]"""
    channel_shuffle: bool = True
    """appendix B (4): colour images, before graying"""

    @model_validator(mode="after")
    def _some_term(self) -> DCCSConfig:
        if not (self.mi or self.aug or self.adv):
            raise ValueError("DCCS needs at least one of mi, aug, adv switched on")
        return self


class DCCS(Method):
    """DCCS on image data; see the module docstring."""

    name: ClassVar[str] = "dccs"
    Config: ClassVar[type[MethodConfig]] = DCCSConfig
    extra_metrics: ClassVar[tuple[str, ...]] = tuple(
        f"kmeans_{v}_{m}" for v in ("z", "zc", "zs") for m in ("acc", "nmi", "ari")
    ) + ("critic_loss", "w_distance")
    smoke_overrides: ClassVar[dict[str, Any]] = {"mlp_hidden": 256}

    def __init__(self, cfg: DCCSConfig, data: Dataset, device: torch.device, epochs: int) -> None:
        super().__init__(cfg, data, device, epochs)
        if not data.is_image:
            raise ValueError("DCCS needs image data (N, C, H, W)")
        self.x = data.x.to(device)
        self.k = data.num_classes
        self._gray = cfg.image_mode == "gray" and data.channels == 3
        ch, size = (1 if self._gray else data.channels), data.image_size
        self.mean, self.std = self._norm_stats(ch)
        self.encoder = build_encoder(cfg.encoder, ch, size, self.k, cfg.style_dim, cfg.width).to(device)
        z_dim = self.k + cfg.style_dim
        self.disc = Discriminator(activation_dim(self.encoder, ch, size), z_dim, cfg.mlp_hidden).to(device)
        self.critic = Critic(z_dim, cfg.mlp_hidden).to(device)
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        params = chain(self.encoder.parameters(), self.disc.parameters())
        self.opt_q = torch.optim.Adam(params, lr=cfg.lr, betas=betas)  # Q and D share one optimiser
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr, betas=betas)
        self.batch_count = 0  # position in the critic/encoder cycle, across epochs
        self.last_critic_loss = float("nan")

    # preprocessing -------------------------------------------------------------------------------
    def _norm_stats(self, ch: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.cfg.normalize == "half":
            return (0.5,) * ch, (0.5,) * ch
        if not self._gray:
            return self.data.mean, self.data.std
        g = torch.cat([A.to_grayscale(xb, channels=1).flatten() for xb in self.x.split(EVAL_BATCH)])
        return (float(g.mean()),), (float(g.std().clamp_min(1e-6)),)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Gray (if asked) and normalise a batch in [0, 1]."""
        if self._gray:
            x = A.to_grayscale(x, channels=1)
        return A.normalize(x, self.mean, self.std)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """T(x): appendix B, each transformation a toggle, all draws from ``self.generator``."""
        cfg, g = self.cfg, self.generator
        if cfg.crop:
            x = A.random_resized_crop(x, scale=(cfg.crop_scale_min, 1.0), ratio=(3 / 4, 4 / 3), generator=g)
        if cfg.hflip:
            x = A.horizontal_flip(x, p=0.5, generator=g)
        if cfg.channel_shuffle and x.shape[1] == 3:
            x = A.channel_shuffle(x, generator=g)
        if cfg.color_jitter:
            j = cfg.jitter
            x = A.color_jitter(x, brightness=j, contrast=j, saturation=j, hue=cfg.jitter_hue, generator=g)
        return x

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(zc logits, z, a) of a prepared batch."""
        zc_logits, zs, a = self.encoder(x)
        return zc_logits, torch.cat([F.softmax(zc_logits, dim=1), zs], dim=1), a

    # losses --------------------------------------------------------------------------------------
    def encoder_losses(self, x: torch.Tensor) -> L.EncoderLoss:
        """Eq. 12 on a raw batch ``x`` in [0, 1]; off terms are not computed (zero)."""
        cfg = self.cfg
        zero = torch.zeros((), device=self.device)
        mi = aug = adv = zero
        if cfg.aug:
            zc_logits_aug = self.encoder(self._prepare(self._augment(x)))[0]
        zc_logits, z, a = self._encode(self._prepare(x))
        if cfg.mi:
            perm = self.permutation(len(z))  # negatives: z shuffled within the batch
            pos, neg = self.disc(torch.cat([a, a]), torch.cat([z, z[perm]])).chunk(2)
            mi = L.mi_loss(pos, neg)
        if cfg.aug:
            aug = L.aug_loss(zc_logits, zc_logits_aug, detach_target=cfg.aug_detach_target)
        if cfg.adv:
            adv = L.encoder_adv_loss(self.critic(z))
        # the one combining point: weighted sum of the terms switched on
        weighted = [(cfg.beta_mi, mi, cfg.mi), (cfg.beta_aug, aug, cfg.aug), (cfg.beta_adv, adv, cfg.adv)]
        total = sum((w * t for w, t, on in weighted if on), zero)
        return L.EncoderLoss(total=total, mi=mi, aug=aug, adv=adv)

    def critic_losses(self, z: torch.Tensor) -> L.CriticLoss:
        """Eq. 11 for encoded ``z`` against fresh prior samples and interpolation weights."""
        cfg, g = self.cfg, self.generator
        z_prior = L.sample_prior(
            len(z), self.k, cfg.style_dim, cfg.prior_sigma, generator=g, device=self.device
        )
        eps = torch.rand(len(z), generator=g, device=self.device)
        gp = L.gradient_penalty(self.critic, z_prior, z, eps)
        return L.critic_loss(self.critic(z), self.critic(z_prior), gp, cfg.lambda_gp)

    # training ------------------------------------------------------------------------------------
    def _encoder_step(self, x: torch.Tensor) -> L.EncoderLoss:
        self.critic.requires_grad_(False)  # L_Adv trains Q only; C has its own steps
        try:
            loss = self.encoder_losses(x)
            self.opt_q.zero_grad(set_to_none=True)
            loss.total.backward()
            self.opt_q.step()
        finally:
            self.critic.requires_grad_(True)
        return loss

    def _critic_step(self, x: torch.Tensor) -> L.CriticLoss:
        with torch.no_grad():
            z = self._encode(self._prepare(x))[1]
        loss = self.critic_losses(z)
        self.opt_c.zero_grad(set_to_none=True)
        (self.cfg.beta_adv * loss.total).backward()  # Eq. 14
        self.opt_c.step()
        return loss

    def _set_train(self, mode: bool) -> None:
        for net in (self.encoder, self.disc, self.critic):
            net.train(mode)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the data in n_critic critic batches then one encoder batch (Algorithm 1)."""
        self._set_train(True)
        n, b = len(self.x), min(self.cfg.batch_size, len(self.x))
        perm = self.permutation(n)
        sums = {k: torch.zeros((), device=self.device) for k in LOGGED}
        n_enc = n_crit = 0
        for i in range(n // b):
            is_encoder = self.batch_count % (self.cfg.n_critic + 1) == self.cfg.n_critic
            self.batch_count += 1
            if not (is_encoder or self.cfg.adv):
                continue
            x = self.x[perm[i * b : (i + 1) * b]]
            if is_encoder:
                e = self._encoder_step(x)
                for key, val in zip(("loss", "loss_mi", "loss_aug", "loss_adv"), e):
                    sums[key] += val.detach()
                n_enc += 1
            else:
                c = self._critic_step(x)
                sums["loss_critic"] += c.total.detach()
                sums["loss_gp"] += c.gp.detach()
                n_crit += 1
            self.steps += 1
            self.images_seen += b
        return self._epoch_means(sums, n_enc, n_crit)

    def _epoch_means(self, sums: dict[str, torch.Tensor], n_enc: int, n_crit: int) -> dict[str, float]:
        out = {}
        for key, val in sums.items():
            count = n_crit if key in ("loss_critic", "loss_gp") else n_enc
            out[key] = float(val) / count if count else 0.0
        bad = {k: v for k, v in out.items() if not np.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"DCCS: non-finite loss in epoch {self.epoch + 1}: {bad} (try a lower lr)"
            )
        if n_crit:
            self.last_critic_loss = out["loss_critic"]
        return out

    # evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """argmax zc; k-means views on z, zc, zs; the critic's loss and Wasserstein estimate."""
        self._set_train(False)
        parts = [self._encode(self._prepare(xb))[1] for xb in self.x.split(EVAL_BATCH)]
        z = torch.cat(parts)
        zc, zs = z[:, : self.k], z[:, self.k :]
        views = {"kmeans_z": z, "kmeans_zc": zc}
        if self.cfg.style_dim:
            views["kmeans_zs"] = zs
        scores = self._critic_scores(z) if self.cfg.adv else {}
        self._set_train(True)
        return Evaluation(
            embedding=z.cpu().numpy(),
            assignment=zc.argmax(dim=1).cpu().numpy(),
            views={k: v.cpu().numpy() for k, v in views.items()},
            scores=scores,
        )

    def _critic_scores(self, z: torch.Tensor) -> dict[str, float]:
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        cfg = self.cfg
        z_prior = L.sample_prior(
            len(z), self.k, cfg.style_dim, cfg.prior_sigma, generator=g, device=self.device
        )
        c_fake = torch.cat([self.critic(zb) for zb in z.split(EVAL_BATCH)])
        c_prior = torch.cat([self.critic(zb) for zb in z_prior.split(EVAL_BATCH)])
        return {"critic_loss": self.last_critic_loss, "w_distance": float(c_prior.mean() - c_fake.mean())}

    # state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Networks, both optimisers, the generator, the cycle position and the last critic loss."""
        return {
            **self.base_state(),
            "encoder": self.encoder.state_dict(),
            "disc": self.disc.state_dict(),
            "critic": self.critic.state_dict(),
            "opt_q": self.opt_q.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "batch_count": self.batch_count,
            "last_critic_loss": self.last_critic_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.load_base_state(state)
        for key in ("encoder", "disc", "critic", "opt_q", "opt_c"):
            getattr(self, key).load_state_dict(state[key])
        self.batch_count = int(state["batch_count"])
        self.last_critic_loss = float(state["last_critic_loss"])
