"""ICS losses (Das, Ghosh, Bhowmick, "Deep representation learning characterized by inter-class separation for
image clustering", WACV 2019), as pure functions of tensors.

- ``reconstruction_loss``: L_r (Eq. 1), mean squared error per element.
- ``balance_loss``: L_b (Eq. 6), minimised by confident assignments balanced across the batch.
- ``triplet_loss``: L_t (Eq. 5), hinge on squared code distances.
- ``select_negatives``: Algorithm 1 (negative mining), vectorised over a batch of anchors.
- ``ics_loss``: ``alpha L_r + beta L_c + gamma L_b + omega L_t``, the one place the terms are weighted.

L_c is DEC's KL(P || Q): see :mod:`tuneclust.losses.dec`.

Sign and reduction of L_b: Eq. 6 literally reads ``sum_i sum_j q log q - sum_j qbar log qbar``, i.e.
``H(qbar) - sum_i H(q_i)``, which a minimiser would make *uncertain* per sample and *imbalanced* over the batch,
the opposite of the stated purpose ("unambiguous model assignments", after Bridle et al.'s mutual information).
We minimise its negative, ``mean_i H(q_i) - H(qbar)`` (= minus the mutual information between sample and
cluster), which is minimal (-log K) exactly for one-hot assignments used equally often. Eq. 5 and 6 sum over
the batch; we average by default (``reduction="mean"``) so the weights do not depend on the batch size.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from tuneclust.losses.dec import kl_divergence
from tuneclust.losses.terms import LossTerms, combine

Reduction = Literal["mean", "sum"]


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


def reconstruction_loss(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L_r (Eq. 1) as the mean squared error over all elements.

    Eq. 1 sums the squared error over pixels and averages over images; the per-element mean differs by the
    constant C*H*W and is Keras' ``mse``, the usual choice of DEC-style code.
    """
    return torch.mean((x_rec - x) ** 2)


def balance_loss(q: torch.Tensor, reduction: Reduction = "mean", eps: float = 1e-12) -> BalanceTerms:
    """L_b = mean_i H(q_i) - H(qbar) with qbar = mean_i q_i (Eq. 6 with the sign fixed, see module doc).

    Args:
        q: (B, K) soft assignments, rows summing to one.
        reduction: ``mean`` (default) or ``sum`` (Eq. 6 as printed) of the per-sample entropies.
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
        reduction: ``mean`` (default) or ``sum`` (Eq. 5 as printed) over the batch.

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
    ``z, z_pos, z_neg, margin`` (L_t). ``reduction`` applies to L_b and L_t (see the module docstring).
    """
    return combine(
        weights,
        {
            "r": lambda: reconstruction_loss(x_rec, x),
            "c": lambda: kl_divergence(p, q),
            "b": lambda: balance_loss(q, reduction).total,
            "t": lambda: triplet_loss(z, z_pos, z_neg, margin, reduction).total,
        },
    )
