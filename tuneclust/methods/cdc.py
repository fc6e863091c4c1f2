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

Logged terms: ``loss`` (weighted total), ``loss_r``, ``loss_cr_x`` (L_cr(Z,X)), ``loss_cr_xrec`` (L_cr(Z,X')),
``loss_c``, ``loss_a`` (unweighted), ``delta_label`` (fraction of argmax-q labels changed at the last P update, DEC's
label-free convergence signal). A term that is switched off or belongs to the other phase is absent, not 0.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from tuneclust.data.registry import Dataset
from tuneclust.losses import cdc as L
from tuneclust.losses.dec import kl_divergence, soft_assign, target_distribution
from tuneclust.methods.base import Evaluation, Method, MethodConfig, NonFiniteLossError
from tuneclust.metrics import kmeans_fit
from tuneclust.nets.autoencoders import DenseAutoencoder

_EVAL_CHUNK = 8192
TERMS = ("loss_r", "loss_cr_x", "loss_cr_xrec", "loss_c", "loss_a")
"""Unweighted loss terms a CDC epoch may log (see the module docstring)."""


class CDCConfig(MethodConfig):
    """CDC hyperparameters and loss toggles. Defaults: paper Sec. 3-4 and methods.md; pre-training from public code."""

    dims: list[int] = Field([500, 500, 2000, 10], min_length=1)
    """Encoder sizes after the input, ending with the embedding d; the decoder mirrors them (Sec. 3.1, from DEC)."""
    init: Literal["dec_uniform", "glorot_uniform"] = "dec_uniform"
    """Dense init: DEC's U(+-1/sqrt(fan_in)) (public code: FMNIST, Reuters) or Glorot (public code: STL-10, CIFAR-10)."""
    alpha: float = Field(1.0, gt=0)
    """Student-t degrees of freedom of every kernel (Eq. 5, 8: "set to 1 for all experiments")."""
    kernel_norm: Literal["row", "global"] = "row"
    """Pairwise kernel normalisation: per row, diagonal included (public code; methods.md) or over all pairs (Eq. 5)."""
    corr_sharpen: bool = False
    """Sharpen C_Z with Eq. 10 inside L_cr: Eq. 6 does not (False), the public code does (True)."""
    batch_size: int = Field(64, ge=2)
    """m, both phases (Sec. 3.4; public code)."""
    pretrain_epochs: int = Field(100, ge=0)
    """Pre-training passes; the paper gives none: public code FMNIST 100, Reuters/STL-10 30, CIFAR-10 60."""
    pretrain_optimizer: Literal["sgd", "adam"] = "sgd"
    """Pre-training optimiser (public code: SGD with momentum for the four datasets, Adam otherwise)."""
    pretrain_lr: float = Field(0.1, gt=0)
    """Public code: FMNIST/Reuters 0.1, STL-10/CIFAR-10 1.0 (SGD); Keras' Adam default would be 1e-3."""
    pretrain_momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum of pre-training (public code)."""
    pretrain_corr: bool = True
    """Pre-train with L_AE (Eq. 7); False = plain AE with L_r only (Table 3 "AE + L_r")."""
    lam: float = Field(1e-3, ge=0)
    """lambda of Eq. 7 (Sec. 4.4: 1e-3; 1e-6 for CIFAR-10); grid over {1e-6, ..., 1}."""
    finetune: bool = True
    """Run the fine-tuning phase; False = the AE rows of Table 3 (k-means on Z after pre-training)."""
    finetune_iters: int = Field(5000, ge=1)
    """T, fine-tuning iterations (Sec. 3.4)."""
    update_interval: int = Field(50, ge=1)
    """h, iterations between target updates (Sec. 3.4; methods.md: 50, 80 for CIFAR-10)."""
    finetune_lr: float = Field(0.01, gt=0)
    """Fine-tuning SGD learning rate (Sec. 3.4)."""
    finetune_momentum: float = Field(0.9, ge=0, lt=1)
    """Fine-tuning SGD momentum (Sec. 3.4)."""
    eta: float = Field(0.75, ge=0)
    """Weight of L_a in Eq. 13 (Sec. 4.4)."""
    beta: float = Field(1e-3, ge=0)
    """Weight of L_re in Eq. 13 (Sec. 4.4)."""
    affinity: bool = True
    """L_a on/off (Table 3)."""
    regularize: bool = True
    """L_re on/off (Table 3)."""
    affinity_sharpen: bool = True
    """C_Q "computed in a similar manner to P" (Sec. 3.3; public code)."""
    affinity_detach_target: bool = False
    """Stop the gradient through C_Q; False as Algorithm 1 line 12 (centres updated by L_a) and the public code."""
    kmeans_init_n_init: int = Field(20, ge=1)
    """k-means restarts of the centre initialisation (public code: 20)."""

    @field_validator("dims")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError(f"layer sizes must be >= 1, got {v}")
        return v


class CDC(Method):
    """Dense autoencoder + correlation, affinity and DEC clustering losses. See the module docstring."""

    name = "cdc"
    Config = CDCConfig
    extra_metrics: ClassVar[tuple[str, ...]] = ("loss", *TERMS, "delta_label")
    smoke_overrides: ClassVar[dict[str, Any]] = dict(
        pretrain_epochs=1, finetune_iters=30, update_interval=10, kmeans_init_n_init=2
    )

    def __init__(self, cfg: CDCConfig, data: Dataset, device: torch.device, epochs: int) -> None:
        super().__init__(cfg, data, device, epochs)
        self.x = data.x.reshape(len(data), -1).to(device=device, dtype=torch.float32)
        self.k = int(data.num_classes)
        self.ae = DenseAutoencoder(self.x.shape[1], cfg.dims, cfg.init).to(device)
        self.centers = torch.nn.Parameter(torch.zeros(self.k, cfg.dims[-1], device=device))
        opt = torch.optim.SGD if cfg.pretrain_optimizer == "sgd" else torch.optim.Adam
        kw = {"momentum": cfg.pretrain_momentum} if cfg.pretrain_optimizer == "sgd" else {}
        self.opt_pre = opt(self.ae.parameters(), lr=cfg.pretrain_lr, **kw)
        self.opt_ft: torch.optim.Optimizer | None = None
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
        self._aff_kw = {
            "alpha": cfg.alpha,
            "norm": cfg.kernel_norm,
            "detach_target": cfg.affinity_detach_target,
        }

    @classmethod
    def recommended_epochs(cls, cfg: CDCConfig) -> int:
        """``budget.epochs`` giving one fine-tuning epoch per target update: pretrain_epochs + ceil(T / h)."""
        return cfg.pretrain_epochs + (
            math.ceil(cfg.finetune_iters / cfg.update_interval) if cfg.finetune else 0
        )

    # training ----------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        if self.epoch < self.n_pretrain:
            out = self._pretrain_epoch()
        elif self.cfg.finetune:
            if not self.clusters_ready:
                self._init_clusters()
            out = self._finetune_epoch(self._iters_this_epoch())
        else:
            out = {}
        if self.cfg.finetune and self.epoch + 1 == self.n_pretrain:
            self._init_clusters()  # the phase boundary: Algorithm 1 lines 2-4
        return out

    def _pretrain_epoch(self) -> dict[str, float]:
        cfg, sums, n = self.cfg, {}, 0
        self.ae.train()
        perm = self.permutation(len(self.x))
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            if len(idx) < 2:  # a kernel needs two points: a last batch of one is skipped
                continue
            xb = self.x[idx]
            z, x_rec = self.ae(xb)
            terms = {"r": L.reconstruction_loss(xb, x_rec)}
            total = terms["r"]
            if cfg.pretrain_corr:
                total = total + cfg.lam * self._corr(z, xb, x_rec, terms)  # Eq. 7
            self._step(self.opt_pre, total, terms, sums, len(idx))
            n += 1
        return self._means(sums, n, "pre-training")

    def _finetune_epoch(self, iters: int) -> dict[str, float]:
        cfg, sums = self.cfg, {}
        for _ in range(iters):
            if self.ft_iter % cfg.update_interval == 0:
                self._update_target()  # Algorithm 1 lines 6-10
            self.ae.train()
            idx = self._next_batch()
            xb = self.x[idx]
            z = self.ae.encode(xb)
            q = soft_assign(z, self.centers, cfg.alpha)
            terms = {"c": kl_divergence(self.p[idx], q)}  # Eq. 9
            total = terms["c"]
            if cfg.affinity:
                terms["a"] = L.affinity_loss(q, z, sharpen_q=cfg.affinity_sharpen, **self._aff_kw)
                total = total + cfg.eta * terms["a"]
            if cfg.regularize:
                total = total + cfg.beta * self._corr(z, xb, self.ae.decode(z), terms)  # Eq. 13
            self._step(self.opt_ft, total, terms, sums, len(idx))
            self.ft_iter += 1
        out = self._means(sums, iters, "fine-tuning")
        return {**out, "delta_label": self.delta_label} if out else out

    def _corr(self, z: torch.Tensor, xb: torch.Tensor, x_rec: torch.Tensor, terms: dict) -> torch.Tensor:
        """L_cr(Z, X) + L_cr(Z, X') (the bracket of Eq. 7, L_re of Eq. 12); logs both terms into ``terms``."""
        cfg = self.cfg
        re = L.regularization_loss(
            z, xb, x_rec, alpha=cfg.alpha, norm=cfg.kernel_norm, sharpen_z=cfg.corr_sharpen
        )
        terms |= {"cr_x": re.latent, "cr_xrec": re.output}
        return re.total

    def _step(
        self, opt: torch.optim.Optimizer, total: torch.Tensor, terms: dict, sums: dict, batch: int
    ) -> None:
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        for key, value in {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}.items():
            sums[key] = sums.get(key, 0.0) + value.detach()
        self.steps += 1
        self.images_seen += batch

    def _means(self, sums: dict[str, torch.Tensor], n: int, phase: str) -> dict[str, float]:
        out = {k: float(v) / max(n, 1) for k, v in sums.items()}
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"CDC {phase} epoch {self.epoch + 1}: non-finite {bad} ({out}); "
                "lower the learning rate or the loss weights"
            )
        return out

    def _iters_this_epoch(self) -> int:
        """T spread evenly over the fine-tuning epochs; never past T."""
        n_ft = max(self.epochs - self.n_pretrain, 1)
        j = self.epoch - self.n_pretrain
        base, extra = divmod(self.cfg.finetune_iters, n_ft)
        planned = base + (1 if j < extra else 0) if j < n_ft else 0
        return max(min(planned, self.cfg.finetune_iters - self.ft_iter), 0)

    def _next_batch(self) -> torch.Tensor:
        n, bs = len(self.x), self.cfg.batch_size
        if self._perm is None or n - self._pos < 2:
            self._perm, self._pos = self.permutation(n), 0
        idx = self._perm[self._pos : self._pos + bs]
        self._pos += bs
        return idx

    @torch.no_grad()
    def _embed(self) -> torch.Tensor:
        self.ae.eval()
        return torch.cat(
            [self.ae.encode(self.x[i : i + _EVAL_CHUNK]) for i in range(0, len(self.x), _EVAL_CHUNK)]
        )

    def _init_clusters(self) -> None:
        """k-means on Z gives the centres; the fine-tuning optimiser is built (Algorithm 1 lines 2-4)."""
        z = self._embed()
        if not bool(torch.isfinite(z).all()):
            raise NonFiniteLossError(
                "CDC: the pre-trained embedding has non-finite values; lower pretrain_lr"
            )
        labels, centers = kmeans_fit(
            z.cpu().numpy(), self.k, n_init=self.cfg.kmeans_init_n_init, seed=self.cfg.seed
        )
        self.centers.data.copy_(torch.from_numpy(centers))
        self.labels_last = torch.from_numpy(labels).to(self.device)
        self._build_finetune_optimizer()
        self._perm, self._pos = None, 0
        self.clusters_ready = True

    def _build_finetune_optimizer(self) -> None:
        params = [*self.ae.parameters(), self.centers]
        self.opt_ft = torch.optim.SGD(params, lr=self.cfg.finetune_lr, momentum=self.cfg.finetune_momentum)

    @torch.no_grad()
    def _update_target(self) -> None:
        """P from q over the whole dataset (Eq. 10), and the fraction of labels changed since the last update."""
        q = soft_assign(self._embed(), self.centers, self.cfg.alpha)
        self.p = target_distribution(q)
        labels = q.argmax(dim=1)
        self.delta_label = float((labels != self.labels_last).float().mean())
        self.labels_last = labels

    # evaluation and state ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """Z for every sample; the cluster layer's argmax q once the centres exist (else k-means on Z)."""
        z = self._embed()
        assignment = None
        if self.clusters_ready:
            assignment = (
                soft_assign(z, self.centers, self.cfg.alpha).argmax(dim=1).cpu().numpy().astype(np.int64)
            )
        return Evaluation(embedding=z.cpu().numpy(), assignment=assignment)

    def progress(self) -> dict[str, float]:
        """``phase`` 0 = pre-training, 1 = centres initialised (fine-tuning); ``finetune_iter`` done so far."""
        return {"phase": float(self.clusters_ready), "finetune_iter": float(self.ft_iter)}

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.base_state(),
            "ae": self.ae.state_dict(),
            "centers": self.centers.detach().clone(),
            "opt_pre": self.opt_pre.state_dict(),
            "opt_ft": self.opt_ft.state_dict() if self.opt_ft is not None else None,
            "clusters_ready": self.clusters_ready,
            "ft_iter": self.ft_iter,
            "p": self.p,
            "labels_last": self.labels_last,
            "delta_label": self.delta_label,
            "perm": self._perm,
            "pos": self._pos,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_base_state(state)
        self.ae.load_state_dict(state["ae"])
        self.centers.data.copy_(state["centers"].to(self.device))
        self.opt_pre.load_state_dict(state["opt_pre"])
        _set_hparams(self.opt_pre, self.cfg.pretrain_lr, self.cfg.pretrain_momentum)
        if state["opt_ft"] is not None:
            self._build_finetune_optimizer()
            self.opt_ft.load_state_dict(state["opt_ft"])
            _set_hparams(self.opt_ft, self.cfg.finetune_lr, self.cfg.finetune_momentum)
        self.clusters_ready = bool(state["clusters_ready"])
        self.ft_iter = int(state["ft_iter"])
        self.delta_label = float(state["delta_label"])
        self._pos = int(state["pos"])
        self.p, self.labels_last, self._perm = (
            None if state[k] is None else state[k].to(self.device) for k in ("p", "labels_last", "perm")
        )


def _set_hparams(opt: torch.optim.Optimizer, lr: float, momentum: float) -> None:
    """The config, not the checkpoint, sets learning rate and momentum (so PBT's mutations take effect)."""
    for group in opt.param_groups:
        group["lr"] = lr
        if "momentum" in group:
            group["momentum"] = momentum
