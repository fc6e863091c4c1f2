"""IDFD losses (Tao, Takagi, Nakata, "Clustering-friendly representation learning via instance discrimination
and feature decorrelation", ICLR 2021): instance discrimination with a memory bank (Eq. 2), the softmax feature
decorrelation L_F (Eq. 5) and the soft orthogonal constraint L_FO (Eq. 3).

Pure functions of tensors (torch only). Normalisations follow the public code and methods.md: L_I and L_F are
means (over the batch and over the d feature rows), L_FO is divided by d.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from tuneclust.losses.terms import LossTerms, combine, fp32

Variant = Literal["id", "idfo", "idfd"]


def init_bank(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """Memory bank initialised uniform in [-1/sqrt(d/3), 1/sqrt(d/3)] (public code), on the generator's device.

    Each entry then has variance 1/d, so rows have norm close to 1 without being normalised.

    Args:
        n: number of instances (rows).
        d: feature dimension.
        generator: source of randomness; the bank lives on its device.

    Returns:
        (n, d) float32 tensor.
    """
    stdv = 1.0 / (d / 3.0) ** 0.5
    u = torch.rand(n, d, generator=generator, device=generator.device)
    return u.mul_(2 * stdv).sub_(stdv)


def instance_loss(f: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, tau: float) -> torch.Tensor:
    """Instance discrimination L_I (Eq. 2): softmax over all N instances of ``f @ bank.T / tau``.

    Args:
        f: (B, d) L2-normalised features of the batch.
        bank: (N, d) memory bank (the rows before this step's update); no gradient flows into it.
        idx: (B,) int64 instance indices of the batch.
        tau: temperature.

    Returns:
        Scalar: cross-entropy with the instance index, mean over the batch.
    """
    logits = f @ bank.detach().t() / tau
    return F.cross_entropy(logits, idx)


def _column_normalised(f: torch.Tensor) -> torch.Tensor:
    """Each feature column L2-normalised over the batch (the vectors f_l of Sec. 3.2)."""
    return F.normalize(f, dim=0)


def feature_decorrelation_loss(f: torch.Tensor, tau2: float) -> torch.Tensor:
    """Softmax feature decorrelation L_F (Eq. 5).

    Args:
        f: (B, d) batch features.
        tau2: temperature.

    Returns:
        Scalar: with F the column-normalised batch and C = F^T F / tau2 (d x d), the cross-entropy of each row
        of C against its own index, mean over the d rows.
    """
    fn = _column_normalised(f)
    c = fn.t() @ fn / tau2
    return F.cross_entropy(c, torch.arange(c.shape[0], device=c.device))


def feature_orthogonal_loss(f: torch.Tensor) -> torch.Tensor:
    """Soft orthogonal constraint L_FO (Eq. 3): ||F^T F - I||_F^2 / d on the column-normalised batch.

    Args:
        f: (B, d) batch features.

    Returns:
        Scalar loss. With a batch smaller than d, F^T F has rank <= B and the loss cannot reach 0 (it is at
        least d / B - 1), which is why the paper pairs d = 128 with B = 128.
    """
    fn = _column_normalised(f)
    g = fn.t() @ fn
    eye = torch.eye(g.shape[0], device=g.device, dtype=g.dtype)
    return (g - eye).pow(2).sum() / g.shape[0]


@torch.no_grad()
def update_bank(bank: torch.Tensor, f: torch.Tensor, idx: torch.Tensor, momentum: float = 0.5) -> None:
    """In place: ``bank[i] <- normalize(momentum * bank[i] + (1 - momentum) * f_i)`` for each i in ``idx``.

    Args:
        bank: (N, d) memory bank, modified in place.
        f: (B, d) features of the batch (detached here).
        idx: (B,) distinct instance indices.
        momentum: weight of the old row (public code: 0.5).
    """
    rows = bank.index_select(0, idx).mul_(momentum).add_(f.detach().to(bank.dtype), alpha=1.0 - momentum)
    bank.index_copy_(0, idx, F.normalize(rows, dim=1))


@fp32
def idfd_loss(
    f: torch.Tensor,
    bank: torch.Tensor,
    idx: torch.Tensor,
    *,
    tau: float,
    tau2: float,
    weights: dict[str, float],
) -> LossTerms:
    """The IDFD objective, the one place its terms are weighted: ``L_I + a L_F`` (Eq. 6) or ``L_I + a L_FO``.

    Args:
        f: (B, d) L2-normalised batch features.
        bank: (N, d) memory bank before this step's update.
        idx: (B,) instance indices.
        tau: temperature of L_I.
        tau2: temperature of L_F.
        weights: ``instance`` (L_I), ``decorrelation`` (L_F, Eq. 5) and ``orthogonal`` (L_FO, Eq. 3); the
            paper's variants are ID = {1, 0, 0}, IDFD = {1, alpha, 0}, IDFO = {1, 0, alpha} (Table 1).

    Returns:
        :class:`~tuneclust.losses.terms.LossTerms` with the terms whose weight is not 0.
    """
    return combine(
        weights,
        {
            "instance": lambda: instance_loss(f, bank, idx, tau),
            "decorrelation": lambda: feature_decorrelation_loss(f, tau2),
            "orthogonal": lambda: feature_orthogonal_loss(f),
        },
    )


def variant_weights(variant: Variant, alpha: float) -> dict[str, float]:
    """The term weights of the paper's variants (Table 1): ``id``, ``idfo`` or ``idfd`` with feature weight alpha."""
    if variant not in ("id", "idfo", "idfd"):
        raise ValueError(f"unknown IDFD variant {variant!r}; expected one of ['id', 'idfd', 'idfo']")
    return {
        "instance": 1.0,
        "decorrelation": alpha if variant == "idfd" else 0.0,
        "orthogonal": alpha if variant == "idfo" else 0.0,
    }
