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
- Term weights (``weights()``): ``mi``/``aug``/``adv`` are the paper's Table 5 names and switch a term's weight to
  0; the ``beta_*`` keys are the weights. A term with weight 0 is not computed and not logged; with L_Adv off
  there are no critic steps, and ``loss_critic``, ``loss_gp``, ``critic_loss`` and ``w_distance`` are absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from tuneclust.data import augment as A
from tuneclust.losses import dccs as L
from tuneclust.methods.base import Evaluation, Method, MethodConfig
from tuneclust.methods.configs import DCCSConfig
from tuneclust.nets.dccs_nets import Critic, Discriminator, activation_dim, build_encoder

EVAL_SEED_OFFSET = 7919
"""Prior samples for ``w_distance`` come from their own generator (seed + this), not the training stream."""


class DCCS(Method):
    """DCCS on image data; see the module docstring."""

    name: ClassVar[str] = "dccs"
    Config: ClassVar[type[MethodConfig]] = DCCSConfig
    extra_metrics: ClassVar[tuple[str, ...]] = tuple(
        f"kmeans_{v}_{m}" for v in ("z", "zc", "zs") for m in ("acc", "nmi", "ari")
    ) + ("critic_loss", "w_distance")
    smoke_overrides: ClassVar[dict[str, Any]] = {"mlp_hidden": 256}
    state_attrs: ClassVar[tuple[str, ...]] = ("batch_count", "last_critic_loss")
    cfg: DCCSConfig

    def build(self) -> None:
        cfg, data = self.cfg, self.data
        if not data.is_image:
            raise ValueError("DCCS needs image data (N, C, H, W)")
        self.x = data.x.to(self.device)
        self.k = data.num_classes
        self._gray = cfg.image_mode == "gray" and data.channels == 3
        ch, size = (1 if self._gray else data.channels), data.image_size
        self.mean, self.std = self._norm_stats(ch)
        enc = build_encoder(cfg.encoder, ch, size, self.k, cfg.style_dim, cfg.width)
        self.encoder = self.add_net("encoder", enc)
        z_dim = self.k + cfg.style_dim
        self.disc = self.add_net("disc", Discriminator(activation_dim(enc, ch, size), z_dim, cfg.mlp_hidden))
        # eager: the gradient penalty differentiates the critic twice, which compiled graphs cannot
        self.critic = self.add_net("critic", Critic(z_dim, cfg.mlp_hidden), entry_points=())

        def adam(c: DCCSConfig) -> dict[str, Any]:
            return {"lr": c.lr, "betas": (c.adam_beta1, c.adam_beta2)}

        params = chain(self.encoder.parameters(), self.disc.parameters())
        self.add_optimizer("q", "adam", params, adam)  # Q and D share one optimiser
        self.add_optimizer("c", "adam", self.critic.parameters(), adam)
        self.batch_count = 0  # position in the critic/encoder cycle, across epochs
        self.last_critic_loss = float("nan")
        # the encoder step's pure part as one graph (the critic's step stays eager: its gradient penalty)
        self._encoder_forward = self.runtime.compile_fn(self.encoder_objective)

    # preprocessing -------------------------------------------------------------------------------
    def _norm_stats(self, ch: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.cfg.normalize == "half":
            return (0.5,) * ch, (0.5,) * ch
        if not self._gray:
            return self.data.mean, self.data.std
        g = A.to_grayscale(self.x, channels=1)
        return (float(g.mean()),), (float(g.std().clamp_min(1e-6)),)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Gray (if asked) and normalise a batch in [0, 1]."""
        if self._gray:
            x = A.to_grayscale(x, channels=1)
        return A.normalize(x, self.mean, self.std)

    def draw_augment(self, n: int) -> dict[str, Any]:
        """The random parameters of T (appendix B, each transformation a toggle) for ``n`` images, drawn from
        ``self.generator`` in the order they are applied (:func:`tuneclust.data.augment.apply_drawn`)."""
        cfg, g = self.cfg, self.generator
        channels, height, width = self.x.shape[1:]
        params: dict[str, Any] = {}
        if cfg.crop:
            params["crop"] = A.sample_boxes(
                n, height, width, scale=(cfg.crop_scale_min, 1.0), ratio=(3 / 4, 4 / 3), generator=g
            )
        if cfg.hflip:
            params["flip"] = A.coin(n, 0.5, g)
        if cfg.channel_shuffle and channels == 3:
            params["shuffle"] = A.draw_channel_perm(n, channels, g)
        if cfg.color_jitter:
            j = cfg.jitter
            params["jitter"] = A.draw_color_jitter(
                n, channels=channels, brightness=j, contrast=j, saturation=j, hue=cfg.jitter_hue, generator=g
            )
        return params

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """T(x): one random augmentation of each image (draw, then apply)."""
        return A.apply_drawn(x, self.draw_augment(len(x)))

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(zc logits, z, a) of a prepared batch."""
        zc_logits, zs, a = self.encoder(x)
        return zc_logits, torch.cat([F.softmax(zc_logits.float(), dim=1), zs.float()], dim=1), a

    # losses --------------------------------------------------------------------------------------
    def encoder_losses(self, x: torch.Tensor) -> L.LossTerms:
        """Eq. 12 on a raw batch ``x`` in [0, 1]; only the terms with a weight are computed. The random draws
        (T's parameters, then the MI negatives' permutation) come first, then the pure part,
        :meth:`encoder_objective`, which the runtime compiles as one graph."""
        w = self.cfg.weights()
        aug = self.draw_augment(len(x)) if w["aug"] else None
        perm = self.permutation(len(x)) if w["mi"] else None  # negatives: z shuffled within the batch
        return self._encoder_forward(x, aug, perm, {"weights": w, "detach": self.cfg.aug_detach_target})

    def encoder_objective(
        self,
        x: torch.Tensor,
        aug: dict[str, Any] | None,
        perm: torch.Tensor | None,
        hp: dict[str, Any],
    ) -> L.LossTerms:
        """Eq. 12 given T's drawn parameters ``aug`` (None: L_Aug off) and the MI permutation ``perm`` (None: off)."""
        w = hp["weights"]
        inputs: dict[str, torch.Tensor] = {}
        if aug is not None:
            inputs["zc_logits_aug"] = self.encoder(self._prepare(A.apply_drawn(x, aug)))[0]
        zc_logits, z, a = self._encode(self._prepare(x))
        inputs["zc_logits"] = zc_logits
        if perm is not None:
            pos, neg = self.disc(torch.cat([a, a]), torch.cat([z, z[perm]])).chunk(2)
            inputs |= {"pos_logits": pos, "neg_logits": neg}
        if w["adv"]:
            inputs["c_fake"] = self.critic(z)
        return L.dccs_loss(w, detach_target=hp["detach"], **inputs)

    def critic_losses(self, z: torch.Tensor) -> L.LossTerms:
        """Eq. 14 for encoded ``z`` against fresh prior samples and interpolation weights."""
        cfg, g = self.cfg, self.generator
        z_prior = L.sample_prior(
            len(z), self.k, cfg.style_dim, cfg.prior_sigma, generator=g, device=self.device
        )
        eps = torch.rand(len(z), generator=g, device=self.device)
        gp = L.gradient_penalty(self.critic, z_prior, z, eps)
        c_fake, c_prior = self.critic(z), self.critic(z_prior)
        return L.dccs_critic_loss(c_fake, c_prior, gp, lambda_gp=cfg.lambda_gp, weight=cfg.weights()["adv"])

    # training ------------------------------------------------------------------------------------
    def schedule(self) -> Iterator[tuple[Callable[[torch.Tensor], dict[str, torch.Tensor]], torch.Tensor]]:
        """Full batches of a seeded permutation, cycling n_critic critic steps then one encoder step
        (Algorithm 1); the cycle runs across epochs; critic batches are skipped when L_Adv is off."""
        n = len(self.x)
        b = min(self.cfg.batch_size, n)
        perm = self.permutation(n)
        adv = bool(self.cfg.weights()["adv"])
        for i in range(n // b):
            encoder_turn = self.batch_count % (self.cfg.n_critic + 1) == self.cfg.n_critic
            self.batch_count += 1
            if encoder_turn:
                yield self.step, perm[i * b : (i + 1) * b]
            elif adv:
                yield self.critic_step, perm[i * b : (i + 1) * b]

    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder step (Q and D) on the samples ``idx``: Eq. 12."""
        self.critic.requires_grad_(False)  # L_Adv trains Q only; C has its own steps
        try:
            out = self.encoder_losses(self.x[idx])
            self.descend("q", out.total)
        finally:
            self.critic.requires_grad_(True)
        return out.logged()

    def critic_step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The critic's step on the samples ``idx``: Eq. 14 on their (fixed) encodings."""
        with torch.no_grad():
            z = self._encode(self._prepare(self.x[idx]))[1]
        out = self.critic_losses(z)
        self.descend("c", out.total)
        return {f"loss_{k}": v for k, v in out.terms.items()}

    def train_epoch(self) -> dict[str, float]:
        means = super().train_epoch()
        if "loss_critic" in means:
            self.last_critic_loss = means["loss_critic"]
        return means

    # evaluation ----------------------------------------------------------------------------------
    def evaluate(self) -> Evaluation:
        """argmax zc; k-means views on z, zc, zs; the critic's loss and Wasserstein estimate."""
        z = self.map_chunks(lambda xb: self._encode(self._prepare(xb))[1], self.x)
        zc, zs = z[:, : self.k], z[:, self.k :]
        views = {"kmeans_z": z, "kmeans_zc": zc}
        if self.cfg.style_dim:
            views["kmeans_zs"] = zs
        return Evaluation(
            embedding=z.cpu().numpy(),
            assignment=zc.argmax(dim=1).cpu().numpy(),
            views={k: v.cpu().numpy() for k, v in views.items()},
            scores=self._critic_scores(z) if self.cfg.weights()["adv"] else {},
        )

    def _critic_scores(self, z: torch.Tensor) -> dict[str, float]:
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        cfg = self.cfg
        z_prior = L.sample_prior(
            len(z), self.k, cfg.style_dim, cfg.prior_sigma, generator=g, device=self.device
        )
        c_fake, c_prior = self.map_chunks(self.critic, z), self.map_chunks(self.critic, z_prior)
        return {"critic_loss": self.last_critic_loss, "w_distance": float(c_prior.mean() - c_fake.mean())}
