"""ICS losses (Das, Ghosh, Bhowmick, "Deep representation learning characterized by inter-class separation for
image clustering", WACV 2019), as pure functions of tensors.

- ``reconstruction_loss``: L_r (Eq. 1).
- ``clustering_loss``: L_c (Eq. 4), DEC's KL(P || Q).
- ``balance_loss``: L_b (Eq. 6), minimised by confident assignments balanced across the batch.
- ``triplet_loss``: L_t (Eq. 5), hinge on squared code distances.
- ``select_negatives``: Algorithm 1 (negative mining), vectorised over a batch of anchors.
- ``ics_loss``: ``alpha L_r + beta L_c + gamma L_b + omega L_t``, the one place the terms are weighted.

Sign and reduction of L_b: Eq. 6 literally reads ``sum_i sum_j q log q - sum_j qbar log qbar``, i.e.
``H(qbar) - sum_i H(q_i)``, which a minimiser would make *uncertain* per sample and *imbalanced* over the batch,
the opposite of the stated purpose ("unambiguous model assignments", after Bridle et al.'s mutual information).
We minimise its negative, ``mean_i H(q_i) - H(qbar)`` (= minus the mutual information between sample and
cluster), which is minimal (-log K) exactly for one-hot assignments used equally often.

Reductions (every term function takes ``reduction``): ``sum`` is the scale of the printed equations, at which
Sec. 4.4 chose alpha=1, beta=0.8, gamma=0.01, omega=0.1: L_r sums the squared error over the pixels of an image and
averages over the batch (Eq. 1's 1/n), L_c and L_t sum over the batch (Eq. 4, 5), L_b sums the per-sample
entropies and subtracts the one entropy of the batch-mean assignment (Eq. 6). ``mean`` divides each by what
makes it a per-sample (per-element for L_r) mean: L_r by C*H*W and the batch, L_c, L_t and the entropy part of
L_b by the batch size B.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tuneclust.losses.terms import LossTerms, Reduction, combine, fp32, reconstruction_loss


class BalanceTerms(NamedTuple):
    """L_b and its two parts."""

    total: torch.Tensor
    """``entropy - marginal_entropy``: the value that is minimised."""
    entropy: torch.Tensor
    """mean (or sum) over the batch of each row's entropy H(q_i): small when assignments are confident."""
    marginal_entropy: torch.Tensor
    """H(qbar) of the batch-mean assignment: large when clusters are used equally."""


class TripletTerms(NamedTuple):
    """L_t and the squared distances it compares (batch mean, for diagnostics)."""

    total: torch.Tensor
    pos_dist: torch.Tensor
    neg_dist: torch.Tensor


class NegativeSelection(NamedTuple):
    """Result of :func:`select_negatives`."""

    index: torch.Tensor
    """(B,) index into the candidate codes of each anchor's negative."""
    found: torch.Tensor
    """(B,) bool: a proper negative (farther than all augmentations) was found within the tries."""


def _reduce(x: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    return x.sum() if reduction == "sum" else x.mean()


def clustering_loss(
    p: torch.Tensor, q: torch.Tensor, reduction: Reduction = "mean", eps: float = 1e-12
) -> torch.Tensor:
    """L_c = KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij) (Eq. 4).

    Args:
        p: (B, K) DEC target rows of the batch.
        q: (B, K) soft assignments.
        reduction: ``sum`` over the batch (Eq. 4 as printed) or ``mean`` (DEC's batch mean).
        eps: floor inside the logarithms; entries with p_ij = 0 add 0.
    """
    rows = (p * (p.clamp_min(eps).log() - q.clamp_min(eps).log())).sum(dim=1)
    return _reduce(rows, reduction)


def balance_loss(q: torch.Tensor, reduction: Reduction = "mean", eps: float = 1e-12) -> BalanceTerms:
    """L_b = sum_i H(q_i) - H(qbar) (``sum``) or mean_i H(q_i) - H(qbar) (``mean``), qbar = mean_i q_i (Eq. 6 with
    the sign fixed, see the module docstring).

    Args:
        q: (B, K) soft assignments, rows summing to one.
        reduction: ``sum`` (Eq. 6 as printed) or ``mean`` of the per-sample entropies; H(qbar) is one term either way.
        eps: floor inside the logarithms.

    Returns:
        BalanceTerms(total, entropy, marginal_entropy).
    """
    entropy = _reduce(-(q * q.clamp_min(eps).log()).sum(dim=1), reduction)
    qbar = q.mean(dim=0)
    marginal = -(qbar * qbar.clamp_min(eps).log()).sum()
    return BalanceTerms(entropy - marginal, entropy, marginal)


def triplet_loss(
    z_a: torch.Tensor, z_p: torch.Tensor, z_n: torch.Tensor, margin: float, reduction: Reduction = "mean"
) -> TripletTerms:
    """L_t = max(0, ||z_a - z_p||^2 - ||z_a - z_n||^2 + margin) over the batch (Eq. 5).

    Args:
        z_a: (B, d) anchor codes.
        z_p: (B, d) positive codes (an augmentation of the anchor).
        z_n: (B, d) negative codes.
        margin: the hinge margin.
        reduction: ``sum`` (Eq. 5 as printed) or ``mean`` over the batch.

    Returns:
        TripletTerms(total, pos_dist, neg_dist); the distances are batch means of the squared distances.
    """
    d_pos = (z_a - z_p).pow(2).sum(dim=1)
    d_neg = (z_a - z_n).pow(2).sum(dim=1)
    hinge = torch.relu(d_pos - d_neg + margin)
    return TripletTerms(_reduce(hinge, reduction), d_pos.mean(), d_neg.mean())


def select_negatives(
    anchor_codes: torch.Tensor,
    aug_codes: torch.Tensor,
    candidate_codes: torch.Tensor,
    *,
    tries: int,
    generator: torch.Generator,
    anchor_index: torch.Tensor | None = None,
) -> NegativeSelection:
    """Algorithm 1, batched: for each anchor, the first of ``tries`` random candidates whose code is farther
    from the anchor's code than the codes of all of the anchor's augmentations.

    The candidates are drawn uniformly with replacement, all at once; "first" follows the draw order, as the
    paper's sequential loop would. An anchor none of whose candidates qualifies falls back to the farthest
    candidate it tried (``found`` is False there).

    Args:
        anchor_codes: (B, d) codes of the anchors.
        aug_codes: (B, A, d) codes of A augmentations of each anchor.
        candidate_codes: (N, d) codes to draw negatives from (e.g. a bank of the whole dataset).
        tries: candidates drawn per anchor (the paper's loop is unbounded).
        generator: random source on the codes' device.
        anchor_index: (B,) optional index of each anchor among the candidates; that candidate never qualifies.

    Returns:
        NegativeSelection(index (B,) into ``candidate_codes``, found (B,) bool).
    """
    batch = anchor_codes.shape[0]
    radius = (aug_codes - anchor_codes[:, None]).norm(dim=2).amax(dim=1)  # (B,)
    cand = torch.randint(
        candidate_codes.shape[0], (batch, tries), generator=generator, device=anchor_codes.device
    )
    dist = (candidate_codes[cand] - anchor_codes[:, None]).norm(dim=2)  # (B, tries)
    if anchor_index is not None:
        dist = dist.masked_fill(cand == anchor_index[:, None], float("-inf"))
    ok = dist > radius[:, None]
    found = ok.any(dim=1)
    first_ok = ok.int().argmax(dim=1)  # index of the first True (0 when none)
    farthest = dist.argmax(dim=1)
    pick = torch.where(found, first_ok, farthest)
    return NegativeSelection(cand.gather(1, pick[:, None]).squeeze(1), found)


@fp32
def ics_loss(
    weights: dict[str, float],
    *,
    x: torch.Tensor,
    x_rec: torch.Tensor | None = None,
    q: torch.Tensor | None = None,
    p: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    z_pos: torch.Tensor | None = None,
    z_neg: torch.Tensor | None = None,
    margin: float = 0.0,
    reduction: Reduction = "mean",
) -> LossTerms:
    """``alpha L_r + beta L_c + gamma L_b + omega L_t`` (Sec. 3.4); weights ``r``, ``c``, ``b``, ``t``.

    Only the inputs of terms with a weight are needed: ``x, x_rec`` (L_r), ``p, q`` (L_c), ``q`` (L_b),
    ``z, z_pos, z_neg, margin`` (L_t). ``reduction`` applies to every term (see the module docstring).
    """
    return combine(
        weights,
        {
            "r": lambda: reconstruction_loss(x_rec, x, reduction),
            "c": lambda: clustering_loss(p, q, reduction),
            "b": lambda: balance_loss(q, reduction).total,
            "t": lambda: triplet_loss(z, z_pos, z_neg, margin, reduction).total,
        },
    )
