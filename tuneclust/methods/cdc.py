"""CDC: correlation losses for deep clustering (Trinh & Pham, "Learning discriminative representations for deep
clustering"; public code github.com/fict-labs/Deep-Clustering-CDC).

One trial runs both phases of Algorithm 1 on a dense autoencoder (DEC's D-500-500-2000-10):

1. pre-training, ``L_AE = L_r + lam * [L_cr(Z, X) + L_cr(Z, X')]`` (Eq. 7), one full pass per epoch;
2. k-means on Z initialises the DEC cluster layer (at the end of the last pre-training epoch);
3. fine-tuning, ``L_DC = L_c + eta * L_a + beta * [L_cr(Z, X) + L_cr(Z, X')]`` (Eq. 13) for T iterations, with
   DEC's target P recomputed over the whole dataset every h iterations. One SGD optimiser updates encoder, decoder
   and centres with L_DC (public code; Algorithm 1 line 13 would update the decoder with L_AE instead).

Epochs: pre-training takes ``pretrain_epochs`` epochs (at most ``epochs - 1`` when fine-tuning is on, with a
warning); fine-tuning gets the epochs left, with the T iterations spread evenly over them, so every budget runs
exactly T iterations (:meth:`CDC.recommended_epochs` gives one epoch per target update). With ``finetune: false``
(Table 3's AE rows) the epochs after pre-training train nothing and return no losses.

Term weights (``weights()``, :func:`tuneclust.losses.cdc.cdc_loss`): pre-training ``r: 1, cr_x = cr_xrec: lam``
(0 with ``pretrain_corr: false``); fine-tuning ``c: 1, a: eta, cr_x = cr_xrec: beta`` (0 with ``affinity`` /
``regularize`` off: Table 3's switches). Logged: ``loss`` (weighted total), ``loss_r``, ``loss_cr_x`` (L_cr(Z,X)),
``loss_cr_xrec`` (L_cr(Z,X')), ``loss_c``, ``loss_a`` (unweighted), ``delta_label`` (fraction of argmax-q labels
changed at the last P update, DEC's label-free convergence signal). A term with weight 0, or of the other phase,
is absent.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from tuneclust.losses.cdc import cdc_loss
from tuneclust.losses.dec import soft_assign, target_distribution
from tuneclust.methods.base import Evaluation, Method
from tuneclust.methods.configs import CDCConfig
from tuneclust.metrics import kmeans_fit
from tuneclust.nets.autoencoders import DenseAutoencoder

TERMS = ("loss_r", "loss_cr_x", "loss_cr_xrec", "loss_c", "loss_a")
"""Unweighted loss terms a CDC epoch may log (see the module docstring)."""


class CDC(Method):
    """Dense autoencoder + correlation, affinity and DEC clustering losses. See the module docstring."""

    name = "cdc"
    Config = CDCConfig
    extra_metrics: ClassVar[tuple[str, ...]] = ("loss", *TERMS, "delta_label")
    smoke_overrides: ClassVar[dict[str, Any]] = dict(
        pretrain_epochs=1, finetune_iters=30, update_interval=10, kmeans_init_n_init=2
    )
    state_attrs: ClassVar[tuple[str, ...]] = (
        "centers", "clusters_ready", "ft_iter", "p", "labels_last", "delta_label", "_perm", "_pos",
    )  # fmt: skip
    cfg: CDCConfig

    def build(self) -> None:
        cfg, epochs = self.cfg, self.epochs
        self.x = self.data.x.reshape(len(self.data), -1).to(device=self.device, dtype=torch.float32)
        self.k = int(self.data.num_classes)
        ae = DenseAutoencoder(self.x.shape[1], cfg.dims, cfg.init)
        self.ae = self.add_net("ae", ae, entry_points=("encode", "decode"))  # forward calls both
        self.centers = torch.nn.Parameter(torch.zeros(self.k, cfg.dims[-1], device=self.device))
        sgd = cfg.pretrain_optimizer == "sgd"
        self.add_optimizer(
            "pre",
            cfg.pretrain_optimizer,
            self.ae.parameters(),
            lambda c: {"lr": c.pretrain_lr, **({"momentum": c.pretrain_momentum} if sgd else {})},
        )
        self.n_pretrain = cfg.pretrain_epochs
        if cfg.finetune and cfg.pretrain_epochs > epochs - 1:
            self.n_pretrain = max(epochs - 1, 0)
            warnings.warn(
                f"CDC: {epochs} epochs leave no fine-tuning after {cfg.pretrain_epochs} pre-training epochs;"
                f" pre-training shortened to {self.n_pretrain}",
                stacklevel=2,
            )
        self.clusters_ready = False
        self.ft_iter = 0
        self.p: torch.Tensor | None = None
        self.labels_last: torch.Tensor | None = None
        self.delta_label = float("nan")
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self._pretrain_forward = self.runtime.compile_fn(self.pretrain_loss)
        self._finetune_forward = self.runtime.compile_fn(self.finetune_loss)

    @classmethod
    def recommended_epochs(cls, cfg: CDCConfig) -> int:
        """``budget.epochs`` giving one fine-tuning epoch per target update: pretrain_epochs + ceil(T / h)."""
        return cfg.pretrain_epochs + (
            math.ceil(cfg.finetune_iters / cfg.update_interval) if cfg.finetune else 0
        )

    # training ----------------------------------------------------------------------------------------
    def _pretraining(self) -> bool:
        return self.epoch < self.n_pretrain

    def on_epoch_start(self) -> None:
        if not self._pretraining() and self.cfg.finetune and not self.clusters_ready:
            self._init_clusters()

    def batches(self) -> Iterator[torch.Tensor]:
        """Pre-training: a seeded pass (a last batch of one skipped: a kernel needs two points). Fine-tuning:
        this epoch's share of the T iterations, batches drawn across passes of a seeded permutation."""
        if self._pretraining():
            yield from super().batches()
        elif self.cfg.finetune:
            for _ in range(self._iters_this_epoch()):
                yield self._next_batch()

    def pretrain_loss(self, xb: torch.Tensor, hp: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Eq. 7 on a batch: the pre-training step's pure part, compiled as one graph by the runtime."""
        z, x_rec = self.ae(xb)
        return cdc_loss(hp["weights"], x=xb, z=z, x_rec=x_rec, **hp["kernel"]).logged()

    def finetune_loss(self, xb: torch.Tensor, p: torch.Tensor, hp: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Eq. 13 on a batch against DEC's target ``p``: the fine-tuning step's pure part (one compiled graph)."""
        w = hp["weights"]
        z = self.ae.encode(xb)
        x_rec = self.ae.decode(z) if w["cr_xrec"] or w["cr_x"] else None
        q = soft_assign(z, self.centers, hp["alpha"])
        return cdc_loss(
            w, x=xb, z=z, x_rec=x_rec, q=q, p=p, sharpen_q=hp["sharpen_q"], detach_q=hp["detach_q"],
            **hp["kernel"],
        ).logged()  # fmt: skip

    def step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, xb = self.cfg, self.x[idx]
        kernel = {"alpha": cfg.t_dof, "norm": cfg.kernel_norm, "sharpen_z": cfg.corr_sharpen}
        if self._pretraining():
            terms = self._pretrain_forward(xb, {"weights": cfg.weights(), "kernel": kernel})
            self.descend("pre", terms["loss"])
            return terms
        if self.ft_iter % cfg.update_interval == 0:
            self._update_target()  # Algorithm 1 lines 6-10
        hp = {
            "weights": cfg.weights(finetuning=True),
            "kernel": kernel,
            "alpha": cfg.t_dof,
            "sharpen_q": cfg.affinity_sharpen,
            "detach_q": cfg.affinity_detach_target,
        }
        terms = self._finetune_forward(xb, self.p[idx], hp)
        self.descend("ft", terms["loss"])
        self.ft_iter += 1
        return terms

    def on_epoch_end(self) -> None:
        if self.cfg.finetune and self.epoch + 1 == self.n_pretrain:
            self._init_clusters()  # the phase boundary: Algorithm 1 lines 2-4

    def train_epoch(self) -> dict[str, float]:
        fine = not self._pretraining() and self.cfg.finetune
        out = super().train_epoch()
        return {**out, "delta_label": self.delta_label} if out and fine else out

    def _iters_this_epoch(self) -> int:
        """T spread evenly over the fine-tuning epochs; never past T."""
        n_ft = max(self.epochs - self.n_pretrain, 1)
        j = self.epoch - self.n_pretrain
        base, extra = divmod(self.cfg.finetune_iters, n_ft)
        planned = base + (1 if j < extra else 0) if j < n_ft else 0
        return max(min(planned, self.cfg.finetune_iters - self.ft_iter), 0)

    def _next_batch(self) -> torch.Tensor:
        """The next batch of the current pass; a new pass when fewer than two samples are left (fewer than a
        full batch with ``runtime.static_shapes``)."""
        n = len(self.x)
        bs = min(self.cfg.batch_size, n)
        if self._perm is None or n - self._pos < (bs if self.runtime.static_shapes else 2):
            self._perm, self._pos = self.permutation(n), 0
        idx = self._perm[self._pos : self._pos + bs]
        self._pos += bs
        return idx

    def _embed(self) -> torch.Tensor:
        return self.map_chunks(self.ae.encode, self.x)

    def _init_clusters(self) -> None:
        """k-means on Z gives the centres; the fine-tuning optimiser is built (Algorithm 1 lines 2-4)."""
        z = self._embed()
        self.check_finite({"pre-trained embedding": z}, "embedding")
        labels, centers = kmeans_fit(
            z.cpu().numpy(), self.k, n_init=self.cfg.kmeans_init_n_init, seed=self.cfg.seed
        )
        with torch.no_grad():
            self.centers.copy_(torch.from_numpy(centers))
        self.labels_last = torch.from_numpy(labels).to(self.device)
        self._build_finetune_optimizer()
        self._perm, self._pos = None, 0
        self.clusters_ready = True

    def _build_finetune_optimizer(self) -> None:
        self.add_optimizer(
            "ft",
            "sgd",
            [*self.ae.parameters(), self.centers],
            lambda c: {"lr": c.finetune_lr, "momentum": c.finetune_momentum},
        )

    def on_load(self, state: dict[str, Any]) -> None:
        if "ft" in state["optimizers"] and "ft" not in self.optimizers:
            self._build_finetune_optimizer()

    @torch.no_grad()
    def _update_target(self) -> None:
        """P from q over the whole dataset (Eq. 10), and the fraction of labels changed since the last update."""
        q = soft_assign(self._embed(), self.centers, self.cfg.t_dof)
        self.p = target_distribution(q)
        labels = q.argmax(dim=1)
        self.delta_label = float((labels != self.labels_last).float().mean())
        self.labels_last = labels

    # evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Z for every sample; the cluster layer's argmax q once the centres exist (else k-means on Z)."""
        z = self._embed()
        assignment = None
        if self.clusters_ready:
            assignment = (
                soft_assign(z, self.centers, self.cfg.t_dof).argmax(dim=1).cpu().numpy().astype(np.int64)
            )
        return Evaluation(embedding=z.cpu().numpy(), assignment=assignment)

    def progress(self) -> dict[str, float]:
        """``phase`` (0 pre-training, 1 centres initialised), ``finetune_iter`` so far, ``lr`` of the phase."""
        opt = self.optimizers["ft" if self.clusters_ready else "pre"].optimizer
        lr = float(opt.param_groups[0]["lr"])
        return {"phase": float(self.clusters_ready), "finetune_iter": float(self.ft_iter), "lr": lr}
