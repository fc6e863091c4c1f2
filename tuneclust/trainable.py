"""The one trainable for every method.

:class:`TrialLoop` is the Ray-free core (``python -m tuneclust train`` runs it in-process): seed everything,
build data and method, loop epochs, evaluate every ``eval_every`` epochs, yield the metrics, checkpoint and
resume. :func:`ray_trainable` is the thin Ray Tune function around it: it picks the device from the GPUs Ray
assigned, resumes from ``tune.get_checkpoint()`` and reports through ``ray.tune.report`` with a checkpoint, so
ASHA, PBT and ``--resume`` continue rather than restart. Ray is imported only inside that function.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneclust import metrics
from tuneclust.data.registry import DataConfig, load_dataset
from tuneclust.methods import NonFiniteLossError, get_method

STATE_FILE = "trial_state.pt"


@dataclass
class TrialPlan:
    """Everything a trial needs, already resolved (no YAML, no search space)."""

    method: str
    config: dict[str, Any]
    data: dict[str, Any]
    epochs: int
    eval_every: int = 1
    cpu: float = 1.0
    gpu: float = 0.0


def resolve_point(
    config: dict[str, Any], ablation: dict[str, dict[str, Any]], data: dict[str, Any], point: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(method config, data config) of one trial: fixed config <- the arm's overrides <- searched values.

    ``point`` holds the searched values, ``arm`` (the ablation arm's name) and ``data.<field>`` keys.
    """
    cfg = dict(config)
    cfg.update(ablation.get(point.get("arm", ""), {}))
    data = dict(data)
    for k, v in point.items():
        if k == "arm":
            continue
        if k.startswith("data."):
            data[k[5:]] = v
        else:
            cfg[k] = v
    return cfg, data


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(gpu_share: float, gpu_ids: list[Any] | None = None) -> torch.device:
    """The trial's device: a GPU only if Ray assigned one (``gpu_ids``), else the CPU.

    A CPU-only trial on a GPU node hides the GPUs before CUDA is initialised (Ray >= 2.56 no longer does).
    A fractional share caps this process's memory on the GPU at that fraction.
    """
    if gpu_share <= 0 or not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return torch.device("cpu")
    if not torch.cuda.is_available():
        return torch.device("cpu")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    first = str(gpu_ids[0])
    index = visible.index(first) if first in visible else (0 if visible else int(first))
    device = torch.device("cuda", index)
    if gpu_share < 1:
        torch.cuda.set_per_process_memory_fraction(gpu_share, device)
    return device


class TrialLoop:
    """Train and evaluate one trial. Iterate :meth:`run` to get the metrics of each evaluation."""

    def __init__(self, plan: TrialPlan, device: torch.device) -> None:
        self.plan = plan
        self.device = device
        cls = get_method(plan.method)
        cfg = cls.Config.model_validate(plan.config)
        self.seed = cfg.seed
        self.n_init = cfg.kmeans_n_init
        seed_everything(cfg.seed)
        torch.set_num_threads(max(1, int(plan.cpu)))
        data = load_dataset(DataConfig.model_validate(plan.data))
        self.labels = data.y
        self.num_classes = data.num_classes
        self.method = cls(cfg, data.to(device), device, plan.epochs)

    def state(self) -> dict[str, Any]:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"method": self.method.state_dict(), "rng": rng, "plan_config": self.plan.config}

    def load(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def evaluate(self) -> dict[str, float]:
        ev = self.method.evaluate()
        return metrics.score_evaluation(ev, self.labels, self.num_classes, self.n_init, self.seed)

    def run(self) -> Iterator[dict[str, float]]:
        """Train to ``plan.epochs``; yield the metrics at every evaluation (and after the last epoch)."""
        m = self.method
        images0, train_time = m.images_seen, 0.0
        while m.epoch < self.plan.epochs:
            self._sync()
            t0 = time.perf_counter()
            losses = m.train_epoch()
            self._sync()
            train_time += time.perf_counter() - t0
            m.epoch += 1
            bad = {k: v for k, v in losses.items() if not math.isfinite(float(v))}
            if bad:
                raise NonFiniteLossError(
                    f"{self.plan.method}: non-finite loss at epoch {m.epoch}: "
                    + ", ".join(f"{k}={v}" for k, v in bad.items())
                    + f" (config {self.plan.config})"
                )
            if m.epoch % self.plan.eval_every and m.epoch < self.plan.epochs:
                continue
            t1 = time.perf_counter()
            out = {k: float(v) for k, v in losses.items()}
            out.update(self.evaluate())
            out.update({k: float(v) for k, v in m.progress().items()})
            out["epoch"] = m.epoch
            out["step"] = m.steps
            out["images_per_s"] = (m.images_seen - images0) / train_time if train_time > 0 else float("nan")
            out["eval_time_s"] = time.perf_counter() - t1
            images0, train_time = m.images_seen, 0.0
            yield out


def ray_trainable(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``config`` is the trial's point of the search space (plus ``arm``);
    ``payload`` the sweep's resolved fixed parts (method, config, ablation, data, budget, resources)."""
    import ray
    from ray import tune

    cfg, data = resolve_point(payload["config"], payload["ablation"], payload["data"], config)
    plan = TrialPlan(
        method=payload["method"],
        config=cfg,
        data=data,
        epochs=payload["epochs"],
        eval_every=payload["eval_every"],
        cpu=payload["cpu"],
        gpu=payload["gpu"],
    )
    device = select_device(plan.gpu, ray.get_gpu_ids() if plan.gpu > 0 else [])
    loop = TrialLoop(plan, device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        loop.load(state)
    for result in loop.run():
        with tempfile.TemporaryDirectory() as d:
            torch.save(loop.state(), Path(d) / STATE_FILE)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
