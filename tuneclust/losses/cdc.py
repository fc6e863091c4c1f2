"""CDC losses (Trinh & Pham, "Learning discriminative representations for deep clustering", Sec. 3.2-3.3).

Pure functions of tensors (torch only). A Student-t kernel turns the pairwise distances of a mini-batch into a
distribution ``C`` (Eq. 5); the losses are KL divergences between such distributions:

- correlation loss ``L_cr(Z, X) = KL(C_Z || C_X)`` (Eq. 6), also on the reconstruction X' (Eq. 7, 12);
- affinity loss ``L_a = KL(C_Q || C_Z)`` between soft assignments and embeddings (Eq. 11), ``C_Q`` sharpened like
  DEC's target (Eq. 10) as the paper says and the public code does;
- reconstruction ``L_r`` (Eq. 1, mean squared error as the public code's Keras ``mse``);
- clustering ``L_c = KL(P || Q)`` is DEC's, in :mod:`tuneclust.losses.dec`;
- :func:`cdc_loss`: the one weighted combination, for both phases (Eq. 7 and Eq. 13).

Kernel normalisation ``row`` (public code: each row sums to one, the diagonal ``C_ii`` included; the KL is the mean
over rows of the row-wise KL, as Keras' ``KLDivergence`` then ``mean``) or ``global`` (Eq. 5: one distribution over all
pairs ``k != l``; the KL is the plain sum of Eq. 6).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch

from tuneclust.losses.dec import kl_divergence
from tuneclust.losses.terms import LossTerms, combine, fp32, reconstruction_loss

KernelNorm = Literal["row", "global"]
EPS = 1e-10
"""Probabilities are clipped at this value inside the logarithms (public code clips its kernels at 1e-10)."""


def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) squared Euclidean distances, exactly zero on the diagonal."""
    x = x.flatten(1)
    sq = x.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    return d2 * (1.0 - torch.eye(x.shape[0], device=x.device, dtype=x.dtype))


def pairwise_kernel(x: torch.Tensor, alpha: float = 1.0, norm: KernelNorm = "row") -> torch.Tensor:
    """Student-t similarities ``(1 + ||x_i - x_j||^2 / alpha)^(-(alpha+1)/2)`` normalised into a distribution (Eq. 5).

    Args:
        x: (B, ...) batch; flattened past the batch axis.
        alpha: degrees of freedom (the paper uses 1).
        norm: ``row`` (each row sums to one, diagonal included) or ``global`` (all off-diagonal pairs sum to one,
            the diagonal is zero).

    Returns:
        (B, B) kernel matrix C.
    """
    k = (1.0 + pairwise_sq_dists(x) / alpha).pow(-(alpha + 1.0) / 2.0)
    if norm == "row":
        return k / k.sum(dim=1, keepdim=True)
    k = k * (1.0 - torch.eye(k.shape[0], device=k.device, dtype=k.dtype))
    return k / k.sum()


def sharpen(c: torch.Tensor, norm: KernelNorm = "row") -> torch.Tensor:
    """DEC's target (Eq. 10) applied to a kernel matrix: ``c_ij^2 / f_j`` with ``f_j = sum_i c_ij``, renormalised.

    Unlike :func:`tuneclust.losses.dec.target_distribution` the gradient is kept (the public code's Keras loss
    does not stop it); detach the result to make it a fixed target.

    Args:
        c: (B, B) kernel from :func:`pairwise_kernel`.
        norm: renormalise per row (``row``) or over the whole matrix (``global``).
    """
    w = c.pow(2) / c.sum(dim=0, keepdim=True)
    return w / (w.sum(dim=1, keepdim=True) if norm == "row" else w.sum())


def kernel_kl(p: torch.Tensor, q: torch.Tensor, norm: KernelNorm = "row") -> torch.Tensor:
    """KL(P || Q) of two kernel matrices: mean of row-wise KLs (``row``) or the sum over all entries (``global``).

    Entries with ``p_ij = 0`` (the diagonal in ``global`` mode) add zero.
    """
    terms = p * (p.clamp_min(EPS).log() - q.clamp_min(EPS).log())
    return terms.sum(dim=1).mean() if norm == "row" else terms.sum()


def correlation_loss(
    z: torch.Tensor, x: torch.Tensor, *, alpha: float = 1.0, norm: KernelNorm = "row", sharpen_z: bool = False
) -> torch.Tensor:
    """``L_cr(Z, X) = KL(C_Z || C_X)`` (Eq. 6) on one mini-batch.

    Args:
        z: (B, d) embeddings.
        x: (B, ...) the points whose neighbourhoods Z should keep (inputs X or reconstructions X').
        alpha: Student-t degrees of freedom.
        norm: kernel normalisation, see :func:`pairwise_kernel`.
        sharpen_z: replace ``C_Z`` by its DEC-sharpened version (public code; not in Eq. 6).
    """
    cz = pairwise_kernel(z, alpha, norm)
    if sharpen_z:
        cz = sharpen(cz, norm)
    return kernel_kl(cz, pairwise_kernel(x, alpha, norm), norm)


class RegularizationLoss(NamedTuple):
    """``L_re = L_cr(Z, X) + L_cr(Z, X')`` (Eq. 12; the bracket of Eq. 7) and its two unweighted terms."""

    total: torch.Tensor
    latent: torch.Tensor
    """L_cr(Z, X): embeddings against inputs."""
    output: torch.Tensor
    """L_cr(Z, X'): embeddings against reconstructions."""


def regularization_loss(
    z: torch.Tensor,
    x: torch.Tensor,
    x_rec: torch.Tensor,
    *,
    alpha: float = 1.0,
    norm: KernelNorm = "row",
    sharpen_z: bool = False,
) -> RegularizationLoss:
    """Both correlation losses of a batch, sharing ``C_Z``. Arguments as :func:`correlation_loss`."""
    cz = pairwise_kernel(z, alpha, norm)
    if sharpen_z:
        cz = sharpen(cz, norm)
    latent = kernel_kl(cz, pairwise_kernel(x, alpha, norm), norm)
    output = kernel_kl(cz, pairwise_kernel(x_rec, alpha, norm), norm)
    return RegularizationLoss(latent + output, latent, output)


def affinity_loss(
    q: torch.Tensor,
    z: torch.Tensor,
    *,
    alpha: float = 1.0,
    norm: KernelNorm = "row",
    sharpen_q: bool = True,
    detach_target: bool = False,
) -> torch.Tensor:
    """``L_a = KL(C_Q || C_Z)`` (Eq. 11): nearby embeddings should get nearby soft assignments.

    Args:
        q: (B, K) soft assignments.
        z: (B, d) embeddings.
        alpha: Student-t degrees of freedom of both kernels.
        norm: kernel normalisation.
        sharpen_q: sharpen ``C_Q`` like P (Eq. 10): paper Sec. 3.3 and public code.
        detach_target: stop the gradient through ``C_Q``. Default False: Algorithm 1 (line 12) updates the centres
            with ``L_c + eta * L_a``, which needs the gradient through ``C_Q``; the public code keeps it too.
    """
    cq = pairwise_kernel(q, alpha, norm)
    if sharpen_q:
        cq = sharpen(cq, norm)
    if detach_target:
        cq = cq.detach()
    return kernel_kl(cq, pairwise_kernel(z, alpha, norm), norm)


@fp32
def cdc_loss(
    weights: dict[str, float],
    *,
    x: torch.Tensor,
    z: torch.Tensor,
    x_rec: torch.Tensor | None = None,
    q: torch.Tensor | None = None,
    p: torch.Tensor | None = None,
    alpha: float = 1.0,
    norm: KernelNorm = "row",
    sharpen_z: bool = False,
    sharpen_q: bool = True,
    detach_q: bool = False,
) -> LossTerms:
    """CDC's objective, the one place its terms are weighted.

    Pre-training (Eq. 7): weights ``{r: 1, cr_x: lam, cr_xrec: lam}``; fine-tuning (Eq. 13):
    ``{c: 1, a: eta, cr_x: beta, cr_xrec: beta}``. Terms: ``r`` = L_r(X, X'), ``cr_x`` = L_cr(Z, X),
    ``cr_xrec`` = L_cr(Z, X'), ``c`` = KL(P || Q), ``a`` = L_a. Only the inputs of weighted terms are needed.

    Args:
        weights: term name -> weight (missing names: off).
        x: (B, D) inputs; z: (B, d) embeddings; x_rec: reconstructions; q: soft assignments; p: DEC targets.
        alpha, norm, sharpen_z: the correlation kernels (see :func:`correlation_loss`).
        sharpen_q, detach_q: the affinity loss (see :func:`affinity_loss`).
    """
    # L_cr(Z, X) and L_cr(Z, X') share their kernels, computed once; a plain dict, which torch.compile traces
    # (functools.cache would break the graph)
    memo: dict[str, Any] = {}

    def reg() -> Any:
        if "reg" not in memo:
            memo["reg"] = regularization_loss(z, x, x_rec, alpha=alpha, norm=norm, sharpen_z=sharpen_z)
        return memo["reg"]

    return combine(
        weights,
        {
            "r": lambda: reconstruction_loss(x_rec, x),  # Keras mse: the mean over elements
            "cr_x": lambda: reg().latent,
            "cr_xrec": lambda: reg().output,
            "c": lambda: kl_divergence(p, q),
            "a": lambda: affinity_loss(
                q, z, alpha=alpha, norm=norm, sharpen_q=sharpen_q, detach_target=detach_q
            ),
        },
    )
