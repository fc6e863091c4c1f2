"""The DEC cluster layer shared by CDC and ICS (Xie, Girshick, Farhadi, "Unsupervised deep embedding for
clustering analysis", ICML 2016): Student-t soft assignments, the sharpened target and KL(P || Q)."""

from __future__ import annotations

import torch


def soft_assign(z: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Student-t soft assignment q_ij = (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha+1)/2), rows normalised.

    Args:
        z: (B, d) embeddings.
        centers: (K, d) cluster centres.
        alpha: degrees of freedom of the Student-t kernel (DEC uses 1).

    Returns:
        (B, K) rows summing to one.
    """
    d2 = torch.cdist(z, centers).pow(2)
    q = (1.0 + d2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(dim=1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's sharpened target p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), with f_j = sum_i q_ij. No gradient."""
    q = q.detach()
    weight = q.pow(2) / q.sum(dim=0, keepdim=True)
    return weight / weight.sum(dim=1, keepdim=True)


def kl_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """KL(P || Q) = sum_ij p_ij log(p_ij / q_ij), averaged over the rows (the batch). Terms with p_ij = 0 add 0."""
    p_safe = p.clamp_min(eps)
    return (p * (p_safe.log() - q.clamp_min(eps).log())).sum(dim=1).mean()
