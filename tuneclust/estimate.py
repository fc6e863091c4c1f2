"""``tuneclust estimate SPEC``: time one trial of a study on this machine and predict the study's cost.

One trial (each search dimension at its representative value, the first arm) runs in-process through
:class:`tuneclust.trainable.TrialLoop` with the spec's ``runtime``, on a seeded subsample of at most
``images`` of the dataset, for one warm-up epoch and ``epochs`` timed epochs, each evaluated. Its steady-state
images/s and evaluation seconds (scaled to the full dataset) give one trial's time at the full budget; the
scheduler's share of that budget, the trial count and how many trials run at once (``resources``,
``max_concurrent``, GPUs, the packing gain) give the wall time and GPU-hours.

Assumptions (printed with the result): the timed trial is representative of all (other search values, arms
and phases can differ in cost); per-image cost does not depend on the dataset size; start-up and tail waves
of the schedulers are ignored; packed trials together run ``pack_gain`` times as fast as one alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from tuneclust.data.registry import DataConfig, load_dataset
from tuneclust.plan import TrialPlan
from tuneclust.runtime import describe, resolve
from tuneclust.schedulers import budget_fraction
from tuneclust.spec import Spec
from tuneclust.trainable import TrialLoop


@dataclass
class Estimate:
    """One study's predicted cost and what it was derived from (seconds unless named otherwise)."""

    device: str
    runtime: str
    timed_images: int
    dataset_images: int
    images_per_s: float
    eval_s: float
    trial_s: float
    trials: int
    budget_fraction: float
    fraction_note: str
    concurrent: int
    parallel_speed: float
    wall_s: float
    gpus_used: float
    gpu_hours: float

    def text(self, name: str) -> str:
        """The human-readable report."""
        hours = self.wall_s / 3600
        lines = [
            f"estimate {name}: one trial timed on {self.device} ({self.runtime}), "
            f"{self.timed_images} of {self.dataset_images} images",
            f"  train {self.images_per_s:,.0f} img/s; evaluation {self.eval_s:.2f} s each (full dataset)",
            f"  one trial at the full budget: {_dur(self.trial_s)}",
            f"  {self.trials} trials x {self.budget_fraction:.2f} of the budget ({self.fraction_note})",
            f"  {self.concurrent} trials at once, together {self.parallel_speed:.2f}x one trial alone",
            f"  predicted wall time: {_dur(self.wall_s)} ({hours:.3g} h)",
            f"  GPU-hours: {self.gpu_hours:.2f}"
            + (f" ({self.gpus_used:g} GPUs busy)" if self.gpus_used else " (CPU only)"),
            "  (assumes every trial costs what the timed one did; ignores start-up and scheduler tails)",
        ]
        return "\n".join(lines)


def _dur(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def concurrency(spec: Spec, gpus: int, cpus: int, pack_gain: float) -> tuple[int, float, float]:
    """(trials at once, their speed together relative to one trial alone, GPUs busy)."""
    r = spec.resources
    if r.gpu > 0:
        per_gpu = max(1, math.floor(1 / r.gpu)) if r.gpu < 1 else 1
        slots = gpus * per_gpu if r.gpu <= 1 else gpus // int(r.gpu)
        slots = max(1, min(slots, spec.max_concurrent or slots, spec.num_trials()))
        if r.gpu < 1:
            gpus_used = math.ceil(slots / per_gpu)
            speed = min(slots, gpus_used * min(pack_gain, per_gpu))
        else:
            gpus_used, speed = slots * r.gpu, float(slots)
        return slots, speed, float(gpus_used)
    slots = max(1, math.floor(cpus / r.cpu))
    slots = max(1, min(slots, spec.max_concurrent or slots, spec.num_trials()))
    return slots, float(slots), 0.0


def _timing_plan(spec: Spec, images: int, epochs: int, seed_subsample: bool) -> tuple[TrialPlan, int]:
    trial = spec.sweep_plan().trial(spec.representative_point())
    data = trial.data
    n_full = len(load_dataset(DataConfig.model_validate(data)).y)
    if seed_subsample and n_full > images:
        data = {**data, "subsample": images}
    return replace(trial, data=data, epochs=epochs + 1, eval_every=1), n_full


def estimate(
    spec: Spec,
    device: torch.device | str = "cpu",
    epochs: int = 2,
    images: int = 2048,
    gpus: int | None = None,
    cpus: int | None = None,
    pack_gain: float = 1.0,
) -> Estimate:
    """Time one trial of ``spec`` on ``device`` and predict the study's wall time and GPU-hours."""
    device = torch.device(device)
    plan, n_full = _timing_plan(spec, images, epochs, seed_subsample=True)
    loop = TrialLoop(plan, device)
    n_timed = len(loop.labels)
    reports = list(loop.run())
    steady = reports[1:] or reports
    ips = sum(r["images_per_s"] for r in steady) / len(steady)
    eval_s = sum(r["eval_time_s"] for r in steady) / len(steady) * n_full / max(1, n_timed)
    n_evals = math.ceil(spec.budget.epochs / spec.budget.eval_every)
    # images a full-dataset epoch trains on (methods may drop a ragged batch or train on pairs)
    images_per_epoch = loop.method.images_seen / max(1, loop.method.epoch) * n_full / max(1, n_timed)
    trial_s = spec.budget.epochs * images_per_epoch / ips + n_evals * eval_s
    fraction, note = budget_fraction(spec)
    if gpus is None:
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if spec.resources.gpu > 0 and gpus == 0:
        gpus = 1  # timed on the CPU for a GPU spec: predict for one such device (the CPU's speed)
    cpus = cpus or (torch.multiprocessing.cpu_count())
    slots, speed, gpus_used = concurrency(spec, gpus, cpus, pack_gain)
    trials = spec.num_trials()
    if fraction == 1.0:
        waves = math.ceil(trials / slots)
        wall_s = waves * trial_s * slots / speed
    else:
        wall_s = trials * fraction * trial_s / speed
    with_runtime = resolve(plan.runtime, device)
    return Estimate(
        device=str(device),
        runtime=describe(with_runtime),
        timed_images=n_timed,
        dataset_images=n_full,
        images_per_s=ips,
        eval_s=eval_s,
        trial_s=trial_s,
        trials=trials,
        budget_fraction=fraction,
        fraction_note=note,
        concurrent=slots,
        parallel_speed=speed,
        wall_s=wall_s,
        gpus_used=gpus_used,
        gpu_hours=wall_s / 3600 * gpus_used,
    )


def main_args(spec: Spec, args: Any) -> str:
    """Run :func:`estimate` with the CLI's arguments; the report text."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    est = estimate(spec, device, args.epochs, args.images, args.gpus, args.cpus, args.pack_gain)
    return est.text(spec.name)
