"""DCCS losses as pure functions of tensors (torch only).

Zhao et al., "Deep Image Clustering with Category-Style Representation", ECCV 2020:

- ``mi_loss``: Eq. 6, the JSD mutual-information estimator as a binary cross-entropy of the discriminator's
  logits on positive pairs (a_i, z_i) and negative pairs (a_i, z_j), mean over all 2B pairs (public code).
- ``aug_loss``: Eq. 7, KL(Q(zc|x) || Q(zc|T(x))), batch mean; the clean target keeps its gradient unless
  ``detach_target`` (public code does not detach).
- ``gradient_penalty`` / ``critic_loss`` / ``encoder_adv_loss``: Eqs. 10-11, WGAN-GP (Gulrajani et al. 2017)
  with per-sample interpolates z_hat = eps * z_prior + (1 - eps) * z (Algorithm 1, line 5 and public code).
- ``sample_prior``: Sec. 3.3, zc one-hot uniform over K, zs ~ N(0, sigma^2 I).
- ``dccs_loss``: Eq. 12, the encoder (and discriminator) objective ``b_MI L_MI + b_Aug L_Aug + b_Adv L_Adv``, and
  ``dccs_critic_loss``: Eq. 14, the critic objective ``b_Adv L_Adv^C``: the two places the terms are weighted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tuneclust.losses.terms import LossTerms, combine, fp32

GP_EPS = 1e-12
"""Added under the square root of the gradient norm (public code): keeps its gradient finite at zero."""


class CriticLoss(NamedTuple):
    """Eq. 11 (unweighted by beta_Adv): ``total = mean C(z) - mean C(z_prior) + lambda_gp * gp``."""

    total: torch.Tensor
    wasserstein: torch.Tensor
    """The critic's Wasserstein estimate ``mean C(z_prior) - mean C(z)`` (Eq. 8)."""
    gp: torch.Tensor
    """The unweighted gradient penalty ``mean_i (||grad C(z_hat_i)||_2 - 1)^2``."""


def sample_prior(
    n: int,
    num_clusters: int,
    style_dim: int,
    sigma: float,
    *,
    generator: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """Draw ``n`` samples of the prior P_Z = (Cat(K, 1/K) as one-hot, N(0, sigma^2 I_S)).

    Args:
        n: number of samples.
        num_clusters: K.
        style_dim: S (0 gives zc alone).
        sigma: standard deviation of the style prior.
        generator: source of randomness (on ``device``).
        device: where the samples live.

    Returns:
        (n, K + S) tensor, zc first.
    """
    idx = torch.randint(num_clusters, (n,), generator=generator, device=device)
    zc = F.one_hot(idx, num_clusters).float()
    zs = sigma * torch.randn(n, style_dim, generator=generator, device=device)
    return torch.cat([zc, zs], dim=1)


def mi_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 6: BCE-with-logits of D, label 1 for positive pairs and 0 for negative pairs, mean over all pairs.

    Args:
        pos_logits: (B,) D(a_i, z_i).
        neg_logits: (B',) D(a_i, z_j), z shuffled within the batch.

    Returns:
        Scalar loss.
    """
    logits = torch.cat([pos_logits, neg_logits])
    labels = torch.cat([torch.ones_like(pos_logits), torch.zeros_like(neg_logits)])
    return F.binary_cross_entropy_with_logits(logits, labels)


def aug_loss(
    zc_logits: torch.Tensor, zc_logits_aug: torch.Tensor, *, detach_target: bool = False
) -> torch.Tensor:
    """Eq. 7: KL(softmax(zc_logits) || softmax(zc_logits_aug)), summed over clusters, mean over the batch.

    Args:
        zc_logits: (B, K) category logits of the clean images.
        zc_logits_aug: (B, K) category logits of their augmentations.
        detach_target: stop the gradient through the clean distribution (public code: False).

    Returns:
        Scalar loss.
    """
    target = F.softmax(zc_logits, dim=1)
    if detach_target:
        target = target.detach()
    return F.kl_div(F.log_softmax(zc_logits_aug, dim=1), target, reduction="batchmean")


def interpolate(z_prior: torch.Tensor, z_fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample interpolates ``eps_i * z_prior_i + (1 - eps_i) * z_fake_i`` (eps of shape (B,))."""
    e = eps.unsqueeze(1)
    return e * z_prior + (1.0 - e) * z_fake


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    z_prior: torch.Tensor,
    z_fake: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    """One-centred gradient penalty ``mean_i (||grad_z C(z_hat_i)||_2 - 1)^2`` at the interpolates.

    The inputs are detached; the result is differentiable w.r.t. the critic's parameters.

    Args:
        critic: maps (B, d) to (B,) scores.
        z_prior: (B, d) prior samples.
        z_fake: (B, d) encoded samples.
        eps: (B,) interpolation weights in [0, 1].

    Returns:
        Scalar penalty (without lambda).
    """
    z_hat = interpolate(z_prior.detach(), z_fake.detach(), eps).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(z_hat).sum(), z_hat, create_graph=True)
    norm = torch.sqrt(grad.pow(2).sum(dim=1) + GP_EPS)
    return (norm - 1.0).pow(2).mean()


def critic_loss(
    c_fake: torch.Tensor, c_prior: torch.Tensor, gp: torch.Tensor, lambda_gp: float
) -> CriticLoss:
    """Eq. 11: ``mean C(z) - mean C(z_prior) + lambda_gp * gp``.

    Args:
        c_fake: (B,) critic scores of encoded z.
        c_prior: (B,) critic scores of prior samples.
        gp: the unweighted gradient penalty.
        lambda_gp: its coefficient.

    Returns:
        The total and its parts.
    """
    w = c_prior.mean() - c_fake.mean()
    return CriticLoss(total=-w + lambda_gp * gp, wasserstein=w, gp=gp)


def encoder_adv_loss(c_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 10: ``-mean C(z)`` for the encoder."""
    return -c_fake.mean()


@fp32
def dccs_loss(
    weights: dict[str, float],
    *,
    pos_logits: torch.Tensor | None = None,
    neg_logits: torch.Tensor | None = None,
    zc_logits: torch.Tensor | None = None,
    zc_logits_aug: torch.Tensor | None = None,
    c_fake: torch.Tensor | None = None,
    detach_target: bool = False,
) -> LossTerms:
    """Eq. 12: ``b_MI L_MI + b_Aug L_Aug + b_Adv L_Adv^Q``; only the inputs of terms with a weight are needed.

    Args:
        weights: ``mi``, ``aug``, ``adv`` (Table 5's M1-M4 switch terms off with weight 0).
        pos_logits, neg_logits: D's logits on positive and shuffled pairs (for ``mi``).
        zc_logits, zc_logits_aug: category logits of clean and augmented images (for ``aug``).
        c_fake: critic scores of the encoded z (for ``adv``).
        detach_target: stop the gradient through the clean distribution of L_Aug.
    """
    return combine(
        weights,
        {
            "mi": lambda: mi_loss(pos_logits, neg_logits),
            "aug": lambda: aug_loss(zc_logits, zc_logits_aug, detach_target=detach_target),
            "adv": lambda: encoder_adv_loss(c_fake),
        },
    )


@fp32
def dccs_critic_loss(
    c_fake: torch.Tensor, c_prior: torch.Tensor, gp: torch.Tensor, *, lambda_gp: float, weight: float
) -> LossTerms:
    """Eq. 14: ``L^C = b_Adv * L_Adv^C`` (Eq. 11); terms ``critic`` (Eq. 11, unweighted) and ``gp``.

    ``total`` is what the critic minimises; ``terms["critic"]`` is the paper's critic loss, whose negative
    estimates the Wasserstein distance (Sec. 4.2.2).
    """
    c = critic_loss(c_fake, c_prior, gp, lambda_gp)
    return LossTerms(weight * c.total, {"critic": c.total, "gp": c.gp})
