"""The one combining point of every method's loss: a weighted sum of named, unweighted terms.

Each ``losses/<m>.py`` exposes its term functions and one ``<m>_loss(..., weights) -> LossTerms``. A term is off
if and only if its weight is 0: it is then neither computed (its thunk is never called) nor logged. Torch only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import torch

Reduction = Literal["mean", "sum"]


class LossTerms(NamedTuple):
    """A weighted total and the unweighted terms that went into it.

    Attributes:
        total: ``sum(weights[k] * terms[k])``.
        terms: the terms with a non-zero weight, unweighted, by name.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    def logged(self) -> dict[str, torch.Tensor]:
        """``{"loss": total, "loss_<term>": term, ...}``: what a method's step returns for the epoch means."""
        return {"loss": self.total, **{f"loss_{k}": v for k, v in self.terms.items()}}


def combine(weights: Mapping[str, float], terms: Mapping[str, Callable[[], torch.Tensor]]) -> LossTerms:
    """Compute the terms whose weight is not 0 and their weighted sum.

    Args:
        weights: term name -> weight; every name must have a term.
        terms: term name -> a thunk computing the unweighted term (called only if its weight is not 0).

    Returns:
        :class:`LossTerms`. With every weight 0 the total is a zero that requires no gradient.
    """
    missing = set(weights) - set(terms)
    if missing:
        raise ValueError(f"weights for unknown terms {sorted(missing)}; terms are {sorted(terms)}")
    on = {k: terms[k]() for k, w in weights.items() if w != 0}
    if not on:
        return LossTerms(torch.zeros(()), {})
    total = sum(
        (weights[k] * v for k, v in on.items()), torch.zeros((), device=next(iter(on.values())).device)
    )
    return LossTerms(total, on)


def reconstruction_loss(x_rec: torch.Tensor, x: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Squared reconstruction error, the ``L_r`` of CDC (Eq. 1) and ICS (Eq. 1). Shapes may differ as long as each
    sample has as many elements (a decoder's flat output against an image).

    Args:
        x_rec: (B, ...) reconstructions.
        x: (B, ...) inputs.
        reduction: ``mean``: over all elements (Keras' ``mse``, the public codes' form); ``sum``: summed over a
            sample's elements and averaged over the batch (``1/n sum_i ||x'_i - x_i||^2`` as printed).
    """
    err = (x_rec.flatten(1) - x.flatten(1)).pow(2)
    return err.sum(dim=1).mean() if reduction == "sum" else err.mean()
