"""The one combining point of every method's loss: a weighted sum of named, unweighted terms.

Each ``losses/<m>.py`` exposes its term functions and one ``<m>_loss(..., weights) -> LossTerms``. A term is off
if and only if its weight is 0: it is then neither computed (its thunk is never called) nor logged. Torch only.

Precision: every ``<m>_loss`` is wrapped in :func:`fp32`, so under a bf16/fp16 runtime the networks run in low
precision but the losses (pairwise distances, kernels, logits against a memory bank, KLs and their reductions)
are computed in fp32 from the networks' outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, TypeVar

import torch
from torch.utils._pytree import tree_flatten, tree_map

Reduction = Literal["mean", "sum"]
Fn = TypeVar("Fn", bound=Callable[..., Any])


def fp32(fn: Fn) -> Fn:
    """Run the loss ``fn`` in fp32 whatever the ambient autocast: its fp16/bf16 tensor arguments are cast to fp32
    (fp64 stays) and autocast is off inside (the runtime's rule: low-precision forward passes, fp32 losses). Without autocast
    and with fp32 inputs it is ``fn`` itself, bit for bit."""

    def up(v: Any) -> Any:
        return v.float() if isinstance(v, torch.Tensor) and v.dtype in (torch.float16, torch.bfloat16) else v

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensors = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return fn(*tree_map(up, args), **tree_map(up, kwargs))

    return wrapper  # type: ignore[return-value]


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
