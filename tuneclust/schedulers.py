"""The scheduler kinds in one place: for each ``scheduler.type``, Ray's scheduler built from the spec and the
share of the budget a trial trains under it (``tuneclust estimate``). Their YAML sections (keys, defaults) are
:class:`tuneclust.spec.Fifo` ... :class:`tuneclust.spec.Pbt`; Ray is imported when a scheduler is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneclust.space import domain
from tuneclust.spec import Spec


@dataclass(frozen=True)
class Kind:
    """One scheduler kind: ``build(spec)`` -> Ray's scheduler; ``share(spec)`` -> (the average share of
    ``budget.epochs`` a trial trains under it, how that was derived)."""

    build: Callable[[Spec], Any]
    share: Callable[[Spec], tuple[float, str]]


def _fifo(spec: Spec) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha(spec: Spec) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(
        time_attr=s.time_attr,
        max_t=s.max_t or spec.budget.epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
    )


def _asha_share(spec: Spec) -> tuple[float, str]:
    s = spec.scheduler
    f = rung_fraction(s.max_t or spec.budget.epochs, s.grace_period, s.reduction_factor)
    return f, f"asha: rungs from grace_period {s.grace_period} by reduction_factor {s.reduction_factor:g}"


def _hyperband(spec: Spec) -> Any:
    from tuneclust.raycompat import HyperBand

    s = spec.scheduler
    return HyperBand(
        time_attr=s.time_attr, max_t=s.max_t or spec.budget.epochs, reduction_factor=s.reduction_factor
    )


def _hyperband_share(spec: Spec) -> tuple[float, str]:
    s = spec.scheduler
    f = rung_fraction(s.max_t or spec.budget.epochs, 1, s.reduction_factor)
    return f, f"hyperband: estimated as successive halving from 1 by reduction_factor {s.reduction_factor:g}"


def _median(spec: Spec) -> Any:
    from ray.tune.schedulers import MedianStoppingRule

    s = spec.scheduler
    return MedianStoppingRule(
        time_attr=s.time_attr, grace_period=s.grace_period, min_samples_required=s.min_samples_required
    )


def _pbt(spec: Spec) -> Any:
    from tuneclust.raycompat import ArmPBT  # exploits within each ablation arm: arms keep their loss weights

    s = spec.scheduler
    return ArmPBT(
        time_attr=s.time_attr,
        perturbation_interval=s.perturbation_interval,
        hyperparam_mutations={k: domain(spec.search[k]) for k in pbt_keys(spec)},
        quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
    )


KINDS: dict[str, Kind] = {
    "fifo": Kind(_fifo, lambda spec: (1.0, "fifo: every trial trains the full budget")),
    "asha": Kind(_asha, _asha_share),
    "hyperband": Kind(_hyperband, _hyperband_share),
    "median": Kind(_median, lambda spec: (1.0, "median: upper bound, stopping depends on the results")),
    "pbt": Kind(_pbt, lambda spec: (1.0, "pbt: every trial trains the full budget")),
}


def build_scheduler(spec: Spec) -> Any:
    """Ray's trial scheduler for the spec's ``scheduler`` section."""
    return KINDS[spec.scheduler.type].build(spec)


def budget_fraction(spec: Spec) -> tuple[float, str]:
    """(average share of ``budget.epochs`` a trial trains under the spec's scheduler, how it was derived)."""
    return KINDS[spec.scheduler.type].share(spec)


def pbt_keys(spec: Spec) -> list[str]:
    """The search keys PBT mutates (none unless the scheduler is PBT)."""
    if spec.scheduler.type != "pbt":
        return []
    return list(spec.scheduler.hyperparam_mutations or spec.space.sampled_dims())


def rung_fraction(max_t: float, grace: float, eta: float) -> float:
    """Share of the full budget that successive halving spends per trial: a fraction 1/eta of the trials
    reaches each next rung (grace, grace*eta, ... up to max_t) and the rest stop at theirs."""
    rungs = [grace]
    while rungs[-1] * eta < max_t:
        rungs.append(rungs[-1] * eta)
    rungs = [r for r in rungs if r < max_t] + [max_t]
    spent, previous = 0.0, 0.0
    for i, r in enumerate(rungs):
        spent += eta**-i * (r - previous)
        previous = r
    return min(1.0, spent / max_t)
