"""ICS: deep clustering with an inter-class separation constraint (Das, Ghosh, Bhowmick, "Deep representation
learning characterized by inter-class separation for image clustering", WACV 2019; methods.md "ICS").

A convolutional autoencoder with a DEC cluster layer, trained on ``alpha*L_r + beta*L_c + gamma*L_b + omega*L_t``
after ``pretrain_epochs`` epochs of L_r alone; the cluster centres come from k-means on the codes at the switch.

Decisions where the paper is silent (each a config key):
- P (DEC target) and the code bank used for negative mining are refreshed together, in one eval-mode pass over
  the whole dataset, at the start of every joint epoch (``target_update_every: 0``) or every T iterations.
- Negatives are drawn from that bank (codes at most one refresh old); the anchor's 10 augmentations and the
  anchor itself are encoded fresh (eval mode, no grad). An anchor without a proper negative after ``neg_tries``
  draws takes the farthest one tried; ``neg_found_rate`` logs the fraction that found one.
- The positive is one of those 10 augmentations, picked at random (Fig. 3); anchor, positive and negative (the
  clean image) then go through the encoder together, with gradients.
- A weight at 0 switches its term off: not computed, not logged (:func:`tuneclust.losses.ics.ics_loss`).
  ``neg_found_rate`` is absent when L_t is off and during pre-training. Pre-training minimises L_r unweighted,
  whatever ``alpha``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from tuneclust.data import augment
from tuneclust.losses.dec import soft_assign, target_distribution
from tuneclust.losses.ics import ics_loss, select_negatives
from tuneclust.methods.base import Evaluation, Method
from tuneclust.methods.configs import ICSConfig
from tuneclust.metrics import kmeans_fit
from tuneclust.nets.conv_autoencoders import ConvAutoencoder

TERMS = ("r", "c", "b", "t")


class ICS(Method):
    """Convolutional autoencoder + DEC layer + balance and triplet constraints."""

    name = "ics"
    Config = ICSConfig
    extra_metrics: ClassVar[tuple[str, ...]] = (*(f"loss_{t}" for t in TERMS), "neg_found_rate")
    smoke_overrides: ClassVar[dict[str, Any]] = {"pretrain_epochs": 1, "n_aug_neg": 4}
    state_attrs: ClassVar[tuple[str, ...]] = ("centers", "phase", "joint_steps", "target", "bank")
    cfg: ICSConfig

    def build(self) -> None:
        cfg, data, device = self.cfg, self.data, self.device
        if not data.is_image:
            raise ValueError("ics needs image data (N, C, H, W); got vectors")
        self.x = data.x.to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.net = self.add_net(
            "net",
            ConvAutoencoder(data.channels, data.image_size, cfg.latent_dim, cfg.arch),
            entry_points=("encode", "decode"),
        )
        self.centers = torch.nn.Parameter(torch.zeros(data.num_classes, cfg.latent_dim, device=device))
        self.add_optimizer("adam", "adam", [*self.net.parameters(), self.centers], lambda c: {"lr": c.lr})
        self.phase = 0
        self.joint_steps = 0
        self.target: torch.Tensor | None = None  # (N, K) DEC target P
        self.bank: torch.Tensor | None = None  # (N, d) codes for negative mining
        self._pretrain_forward = self.runtime.compile_fn(self.pretrain_loss)
        self._joint_forward = self.runtime.compile_fn(self.joint_loss)

    # helpers ------------------------------------------------------------------------------------------
    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def draw_augment(self, n: int) -> dict[str, Any]:
        """The random parameters of the augmentation of ``n`` images (rotation, scale, flip, brightness/contrast,
        erasing; each on when its strength is above 0), drawn from the trial's generator in that order."""
        c, g = self.cfg, self.generator
        channels, height, width = self.x.shape[1:]
        params: dict[str, Any] = {}
        if c.aug_rotation > 0:
            params["rotate"] = augment.draw_angles(n, c.aug_rotation, generator=g)
        if c.aug_scale > 0:
            params["zoom"] = augment.draw_zoom(n, (1 - c.aug_scale, 1 + c.aug_scale), generator=g)
        if c.aug_flip > 0:
            params["flip"] = augment.coin(n, c.aug_flip, g)
        if c.aug_brightness > 0 or c.aug_contrast > 0:
            params["jitter"] = augment.draw_color_jitter(
                n, channels=channels, brightness=c.aug_brightness, contrast=c.aug_contrast, generator=g
            )
        if c.aug_erasing > 0:
            params["erase"] = augment.draw_erasing(n, height, width, p=c.aug_erasing, generator=g)
        return params

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """One random augmentation of each image (draw, then apply)."""
        return augment.apply_drawn(x, self.draw_augment(len(x)))

    def _encode_all(self) -> torch.Tensor:
        return self.map_chunks(lambda xb: self.net.encode(self._norm(xb)), self.x)

    @torch.no_grad()
    def _init_clusters(self) -> None:
        z = self._encode_all()
        _, centers = kmeans_fit(z.cpu().numpy(), self.data.num_classes, self.cfg.kmeans_n_init, self.cfg.seed)
        self.centers.copy_(torch.from_numpy(centers).to(self.device))
        self.phase = 1

    @torch.no_grad()
    def _refresh(self) -> None:
        """Recompute the code bank and DEC's target P over the whole dataset."""
        self.bank = self._encode_all()
        self.target = target_distribution(soft_assign(self.bank, self.centers))

    # training -----------------------------------------------------------------------------------------
    def _joint(self) -> bool:
        return self.epoch >= self.cfg.pretrain_epochs

    def on_epoch_start(self) -> None:
        if self._joint() and self.phase == 0:
            self._init_clusters()
        if self._joint() and self.cfg.target_update_every == 0:
            self._refresh()

    def pretrain_loss(self, x: torch.Tensor, hp: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Pre-training on a batch: L_r alone, unweighted (the step's pure part, one compiled graph)."""
        x = self._norm(x)
        return ics_loss(
            {"r": 1.0}, x=x, x_rec=self.net.decode(self.net.encode(x)), reduction=hp["reduction"]
        ).logged()

    def joint_loss(
        self,
        x: torch.Tensor,
        triplet: tuple[torch.Tensor, torch.Tensor] | None,
        p: torch.Tensor | None,
        hp: dict[str, Any],
    ) -> dict[str, torch.Tensor]:
        """The joint objective on a batch given the mined (positive, negative) images and DEC's target ``p``:
        the step's pure part (one compiled graph; the mining draws from the generator and stays outside)."""
        w = hp["weights"]
        inputs: dict[str, Any] = {"x": self._norm(x), "margin": hp["margin"], "reduction": hp["reduction"]}
        if triplet is not None:
            z, z_pos, z_neg = self.net.encode(self._norm(torch.cat([x, *triplet]))).split(len(x))
            inputs |= {"z": z, "z_pos": z_pos, "z_neg": z_neg}
        else:
            z = self.net.encode(inputs["x"])
        if w["r"]:
            inputs["x_rec"] = self.net.decode(z)
        if p is not None:
            inputs |= {"q": soft_assign(z, self.centers), "p": p}
        return ics_loss(w, **inputs).logged()

    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        c, x = self.cfg, self.x[idx]
        if not self._joint():
            terms = self._pretrain_forward(x, {"reduction": c.reduction})
            self.descend("adam", terms["loss"])
            return terms
        every = c.target_update_every
        if every and self.joint_steps % every == 0:
            self._refresh()
        w, extra, triplet = c.weights(), {}, None
        if w["t"]:
            x_pos, x_neg, found = self._triplet_images(x, idx)
            triplet = (x_pos, x_neg)
            extra["neg_found_rate"] = found.float().mean()
        p = self.target[idx] if w["c"] or w["b"] else None
        hp = {"weights": w, "margin": c.margin, "reduction": c.reduction}
        terms = self._joint_forward(x, triplet, p, hp)
        self.descend("adam", terms["loss"])
        self.joint_steps += 1
        return {**terms, **extra}

    @torch.no_grad()
    def _triplet_images(
        self, x: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positive (one of ``n_aug_neg`` augmentations) and negative (Algorithm 1) images of the anchors."""
        b, a = len(idx), self.cfg.n_aug_neg
        augs = self._augment(x.repeat_interleave(a, dim=0))
        self.net.eval()
        z_anchor = self.net.encode(self._norm(x))
        z_augs = self.net.encode(self._norm(augs)).view(b, a, -1)
        self.net.train()
        sel = select_negatives(
            z_anchor, z_augs, self.bank, tries=self.cfg.neg_tries, generator=self.generator, anchor_index=idx
        )
        pick = torch.randint(a, (b,), generator=self.generator, device=self.device)
        x_pos = augs.view(b, a, *x.shape[1:])[torch.arange(b, device=self.device), pick]
        return x_pos, self.x[sel.index], sel.found

    # evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Codes of the whole dataset; after pre-training also argmax q (before: the spine's k-means)."""
        z = self._encode_all()
        assignment = soft_assign(z, self.centers).argmax(dim=1).cpu().numpy() if self.phase else None
        return Evaluation(embedding=z.cpu().numpy().astype(np.float32), assignment=assignment)

    def progress(self) -> dict[str, float]:
        return {**super().progress(), "phase": float(self.phase)}
