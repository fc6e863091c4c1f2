"""The one place a trial's configuration is assembled and validated.

A trial's method config is ``method defaults <- spec config <- ablation arm <- searched point`` and its data config
``spec data <- data.<field> of the point``: :func:`merge` does that, once, for spec validation, for the driver (the
tables' ``config.*`` columns) and for the worker (the trial itself). :class:`SweepPlan` is what every trial of a
sweep shares, built by the driver from the spec and shipped to the workers; :class:`TrialPlan` is one trial,
ready to run without YAML or Ray (``python -m tuneclust train`` and the benchmarks build it directly).

This module sits below the spec layer: it never imports the spec, the trainable or Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def merge(
    config: dict[str, Any], arm: dict[str, Any], data: dict[str, Any], point: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method config, data config) of one trial: ``config <- arm <- point``; ``data <- data.<field>`` keys.

    Args:
        config: the spec's fixed method config (unvalidated keys; defaults are filled in by validation).
        arm: the ablation arm's overrides ({} without an ablation).
        data: the spec's data section.
        point: the searched values, possibly with ``arm`` (ignored here) and ``data.<field>`` keys.
    """
    cfg = {**config, **arm}
    data = dict(data)
    for k, v in point.items():
        if k == "arm":
            continue
        if k.startswith("data."):
            data[k[5:]] = v
        else:
            cfg[k] = v
    return cfg, data


def method_config(method: str, cfg: dict[str, Any]) -> Any:
    """The one validation of a method config (spec checks, the driver's table columns, the trial): strict (no
    coercion: ``"0.5"`` is not a number, ``true`` not an integer), defaults filled in. Numpy scalars (from Ray's
    samplers) count as the Python numbers they hold.

    Returns:
        The method's :class:`~tuneclust.methods.base.MethodConfig`. Raises pydantic's ``ValidationError``.
    """
    from tuneclust.methods import get_method

    plain = {
        k: v.item() if type(v).__module__ == "numpy" and hasattr(v, "item") else v for k, v in cfg.items()
    }
    return get_method(method).Config.model_validate(plain, strict=True)


def validated_config(method: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Every key of the method's config, defaults included, after :func:`method_config`."""
    return method_config(method, cfg).model_dump()


@dataclass
class TrialPlan:
    """Everything one trial needs, already resolved (no YAML, no search space).

    Attributes:
        method: registry name (``idfd``, ``dccs``, ``cdc``, ``ics``).
        config: the method config (validated by the trial when it builds the method).
        data: the data config (fields of :class:`~tuneclust.data.registry.DataConfig`).
        epochs: epochs to train.
        eval_every: evaluate, report and checkpoint every this many epochs (and after the last).
        cpu: CPUs of the trial (torch threads).
        gpu: GPU share of the trial (0: CPU only).
        runtime: the spec's runtime section (precision, channels_last, compile, ...); {} = fp32 eager on any device
            (:class:`tuneclust.methods.base.Exact`; a spec always gives its section, defaults included).
        evaluation: the spec's evaluation section (the shared subset whose partitions are stored); {} = defaults.
    """

    method: str
    config: dict[str, Any]
    data: dict[str, Any]
    epochs: int
    eval_every: int = 1
    cpu: float = 1.0
    gpu: float = 0.0
    runtime: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepPlan:
    """What every trial of a sweep shares: built once by the driver, shipped to the workers with the trainable."""

    method: str
    config: dict[str, Any]
    ablation: dict[str, dict[str, Any]]
    data: dict[str, Any]
    epochs: int
    eval_every: int
    cpu: float
    gpu: float
    runtime: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def configs_at(self, point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(method config, data config) of the trial at ``point`` (see :func:`merge`)."""
        return merge(self.config, self.ablation.get(point.get("arm") or "", {}), self.data, point)

    def trial(self, point: dict[str, Any]) -> TrialPlan:
        """The plan of the trial at ``point`` (Ray's trial config: searched values and ``arm``)."""
        cfg, data = self.configs_at(point)
        shared = {k: v for k, v in asdict(self).items() if k not in ("config", "ablation", "data")}
        return TrialPlan(config=cfg, data=data, **shared)

    def identity(self, point: dict[str, Any]) -> dict[str, Any]:
        """The table columns of the trial at ``point``: arm, every resolved config key, the data fields."""
        cfg, data = self.configs_at(point)
        ident: dict[str, Any] = {"arm": point.get("arm") or ""}
        ident.update({f"config.{k}": v for k, v in validated_config(self.method, cfg).items()})
        ident["data.name"] = data["name"]
        ident.update({k: v for k, v in point.items() if k.startswith("data.")})
        return ident
