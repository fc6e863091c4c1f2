"""The one trainable for every method.

:class:`TrialLoop` is the Ray-free core (``python -m tuneclust train`` runs it in-process): seed everything,
build data and method, run the method's epochs (the loop itself is :meth:`Method.train_epoch`), evaluate every
``eval_every`` epochs, yield the metrics, checkpoint and resume. :func:`ray_trainable` is the thin Ray Tune
function around it: it builds the trial's plan from the sweep's (:mod:`tuneclust.plan`), picks the device from the
GPUs Ray assigned, resumes from ``tune.get_checkpoint()`` (a resume, an early-stopping continuation or a PBT
exploit: the trial's *current* config wins over the checkpoint's hyperparameters) and reports through
``ray.tune.report`` with a checkpoint. Ray is imported only inside that function.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneclust import criteria, metrics, partitions
from tuneclust.data.registry import DataConfig, Dataset, dataset_key, load_dataset
from tuneclust.methods import get_method
from tuneclust.plan import SweepPlan, TrialPlan, method_config
from tuneclust.storage import retrying

STATE_FILE = "trial_state.pt"
SUPERSEDED_FILE = "superseded.txt"

__all__ = [
    "STATE_FILE",
    "TrialLoop",
    "TrialOutOfMemoryError",
    "available_checkpoint",
    "ray_trainable",
    "seed_everything",
    "select_device",
]


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


def _runtime(runtime: dict[str, Any], device: torch.device) -> Any:
    """The trial's runtime (precision, memory format, compilation) from the spec's ``runtime`` section; None
    (fp32 eager, :class:`tuneclust.methods.base.Exact`) when the spec has none."""
    if not runtime:
        return None
    from tuneclust.runtime import RuntimeConfig, resolve

    resolved = resolve(RuntimeConfig.model_validate(runtime), device)
    resolved.apply_global()
    return resolved


class TrialOutOfMemoryError(RuntimeError):
    """A trial needed more GPU memory than it may use: the trial fails, its neighbours on the GPU go on."""


def out_of_memory_message(
    label: str, epoch: int, share: float, batch_size: Any, cap_gib: float | None, peak_gib: float | None
) -> str:
    """One line saying which trial ran out of GPU memory, within what cap, and what to change."""
    where = f"{label}: " if label else ""
    cap = (
        f"it may use {share:g} of the GPU ({cap_gib:.1f} GiB, resources.gpu: {share:g})"
        if cap_gib is not None
        else f"resources.gpu: {share:g}"
    )
    peak = f", {peak_gib:.1f} GiB were allocated at the peak" if peak_gib is not None else ""
    return (
        f"{where}out of GPU memory in epoch {epoch + 1}: {cap}{peak}. Lower config.batch_size "
        f"(now {batch_size}) or give each trial a larger resources.gpu (fewer trials per GPU)"
    )


class TrialLoop:
    """Train and evaluate one trial. Iterate :meth:`run` to get the metrics of each evaluation.

    Args:
        plan: the trial (method, config, data, budget, resources).
        device: where the data and networks live.
        dataset: the decoded dataset, if the caller already has it (e.g. from Ray's object store); else it is
            loaded from ``plan.data``.
        label: names the trial in error messages (e.g. Ray's trial id).
    """

    def __init__(
        self, plan: TrialPlan, device: torch.device, dataset: Dataset | None = None, label: str = ""
    ) -> None:
        self.plan = plan
        self.device = device
        cls = get_method(plan.method)
        cfg = method_config(plan.method, plan.config)  # the one validation of a method config
        self.seed = cfg.seed
        self.n_init = cfg.kmeans_n_init
        seed_everything(cfg.seed)
        torch.set_num_threads(max(1, int(plan.cpu)))
        data = dataset if dataset is not None else load_dataset(DataConfig.model_validate(plan.data))
        self.labels = data.y
        self.num_classes = data.num_classes
        ev = {"subset": partitions.SUBSET, "embedding_points": partitions.EMBEDDING_POINTS, "seed": 0}
        ev.update(plan.evaluation)
        self.n = len(data.x)
        self.subset = partitions.subset_index(self.n, ev["subset"], ev["seed"])
        """Positions of the sweep's shared evaluation subset (the same in every trial)."""
        self.embedding_points = min(int(ev["embedding_points"]), len(self.subset))
        self._reference_images = data.x[self.subset[: criteria.REFERENCE_POINTS]].float().cpu().numpy()
        self._reference: np.ndarray | None = None
        self.partition: tuple[np.ndarray, np.ndarray | None] | None = None
        """(cluster of each subset image, float16 embedding of the first ``embedding_points``) of the last
        evaluation."""
        self.subset_written = False
        runtime = _runtime(plan.runtime, device)
        self.method = cls(cfg, data.to(device), device, plan.epochs, runtime=runtime)
        self.runtime_tags: dict[str, str] = (
            runtime.tags() if runtime is not None else {"runtime.device": str(device)}
        )
        """What the trial actually runs with (after fallbacks): reported with every result, kept as MLflow tags."""
        self.compile_watch = runtime.watch_compile() if runtime is not None else None
        """Graph breaks and CUDA-graph skips of the compiled step, reported with every result (compile on)."""
        self.method.label = label or f"seed {cfg.seed}"

    def state(self) -> dict[str, Any]:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"method": self.method.state_dict(), "rng": rng}

    def load(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint. The method re-applies this plan's config to its optimisers afterwards."""
        self.method.load_state_dict(state["method"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    @contextlib.contextmanager
    def _memory_cap(self) -> Iterator[None]:
        """Turn torch's out-of-memory error (the trial's share of the GPU is capped in :func:`select_device`)
        into one :class:`TrialOutOfMemoryError` line naming the cap and what to change."""
        try:
            yield
        except torch.OutOfMemoryError as e:
            cap = peak = None
            if self.device.type == "cuda":
                gib = 2.0**30
                share = min(1.0, self.plan.gpu) if self.plan.gpu > 0 else 1.0
                cap = share * torch.cuda.get_device_properties(self.device).total_memory / gib
                peak = torch.cuda.max_memory_allocated(self.device) / gib
            raise TrialOutOfMemoryError(
                out_of_memory_message(
                    self.method.label,
                    self.method.epoch,
                    self.plan.gpu,
                    getattr(self.method.cfg, "batch_size", "n/a"),
                    cap,
                    peak,
                )
            ) from e

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def evaluate(self) -> dict[str, float]:
        """The method's evaluation, checked for non-finite values, scored by :mod:`tuneclust.metrics`
        (k-means on the trial's device); ``eval_embed_s`` is the embedding's share of the evaluation time."""
        m = self.method
        t0 = time.perf_counter()
        ev = m.evaluate()
        embed_s = time.perf_counter() - t0
        arrays = {"embedding": ev.embedding, **{f"view {k}": v for k, v in ev.views.items()}}
        m.check_finite({k: v for k, v in arrays.items() if v is not None}, "embedding", epoch=m.epoch)
        assignment, kmeans_s = metrics.assign(ev, self.num_classes, self.n_init, self.seed, self.device)
        out = metrics.score_evaluation(
            ev, self.labels, self.num_classes, self.n_init, self.seed, self.device, assignment=assignment
        )
        out["eval_kmeans_s"] += kmeans_s
        out["eval_embed_s"] = embed_s
        if len(assignment) == self.n:
            own = assignment[self.subset]
            emb = None
            if ev.embedding is not None and self.embedding_points:
                emb = np.asarray(ev.embedding)[self.subset[: self.embedding_points]].astype(np.float16)
            self.partition = (own, emb)
            if self._reference is None:  # the fixed reference space: PCA of the subset's images, once
                self._reference = criteria.reference_space(self._reference_images)
            out["reference_silhouette"] = criteria.reference_silhouette(
                self._reference, own[: len(self._reference)]
            )
        return out

    def run(self) -> Iterator[dict[str, float]]:
        """Train to ``plan.epochs``; yield the metrics at every evaluation (and after the last epoch)."""
        m = self.method
        images0, train_time = m.images_seen, 0.0
        while m.epoch < self.plan.epochs:
            self._sync()
            t0 = time.perf_counter()
            with self._memory_cap():
                losses = m.train_epoch()  # raises NonFiniteError naming the term and the epoch
                self._sync()
            train_time += time.perf_counter() - t0
            m.epoch += 1
            if m.epoch % self.plan.eval_every and m.epoch < self.plan.epochs:
                continue
            t1 = time.perf_counter()
            out = {k: float(v) for k, v in losses.items()}
            with self._memory_cap():
                out.update(self.evaluate())
            out.update({k: float(v) for k, v in m.progress().items()})
            out["epoch"] = m.epoch
            out["step"] = m.steps
            out["images_per_s"] = (m.images_seen - images0) / train_time if train_time > 0 else float("nan")
            out["eval_time_s"] = time.perf_counter() - t1
            if self.compile_watch is not None:
                out.update(self.compile_watch.report())
            out.update(self.runtime_tags)
            images0, train_time = m.images_seen, 0.0
            yield out


def available_checkpoint(fs: Any, path: str) -> str:
    """The checkpoint directory to restore when Ray hands a trial the checkpoint at ``path`` on ``fs`` (a pyarrow
    filesystem): ``path`` itself when it holds the trial state, else the trial's earliest later checkpoint that does.

    Ray saves its experiment state (which names each trial's latest checkpoint) on a timer, but deletes a trial's
    older checkpoint (``num_to_keep``) as soon as it registers a newer one. A driver killed in between leaves a
    state naming a deleted checkpoint, and ``--resume`` would fail that trial. The checkpoints still on storage
    are then the last one the driver registered (its result is in the tables) and any the trial uploaded after
    it that the driver never processed: the earliest of them is the registered one, so no reported epoch is
    skipped. A small note is written where the missing checkpoint was: Ray checks that the checkpoint it
    restores exists before the trial starts, and deletes it once the trial saves again.

    Raises:
        FileNotFoundError: no checkpoint of this trial holding a trial state is left on storage.
    """
    import pyarrow.fs as pafs

    from tuneclust.raycompat import CHECKPOINT_DIR

    def holds_state(directory: str) -> bool:
        return fs.get_file_info(posixpath.join(directory, STATE_FILE)).type == pafs.FileType.File

    if holds_state(path):
        return path
    parent, name = posixpath.split(path.rstrip("/"))
    match = CHECKPOINT_DIR.search(name)
    missing = int(match.group(1)) if match else -1
    found = []
    for info in fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        m = CHECKPOINT_DIR.search(info.base_name)
        if m and info.type == pafs.FileType.Directory and holds_state(info.path):
            found.append((int(m.group(1)), info.path))
    if not found:
        raise FileNotFoundError(
            f"checkpoint {path} has no {STATE_FILE} and no other checkpoint of this trial is left on storage"
        )
    later = sorted(f for f in found if f[0] > missing)
    _, chosen = later[0] if later else max(found)
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(posixpath.join(path, SUPERSEDED_FILE)) as f:
            f.write(f"restored from {posixpath.basename(chosen)} (this checkpoint was deleted)\n".encode())
    except OSError as e:  # Ray's restore will then report the missing checkpoint itself
        print(f"warning: could not mark {path} as superseded: {e}", file=sys.stderr)
    return chosen


def superseded_line(path: str, chosen: str) -> str:
    """The warning printed when a trial resumes from ``chosen`` because the checkpoint at ``path`` is gone."""
    return (
        f"warning: {posixpath.basename(path)} of trial {posixpath.basename(posixpath.dirname(path))} "
        f"is gone from storage (deleted after Ray last saved its experiment state); "
        f"the trial resumes from {posixpath.basename(chosen)}"
    )


def share_partition(loop: TrialLoop, results: str, trial_id: str, point: dict[str, Any], epoch: int) -> dict:
    """Store the trial's partition of the shared subset at ``epoch`` in the sweep's folder ``results`` and return
    its agreement with the partitions its peers stored there already (:func:`tuneclust.criteria.online`)."""
    if loop.partition is None:
        return {}
    seed = int(point.get("seed", loop.seed))
    own = partitions.Partition(
        trial_id, epoch, loop.partition[0], loop.partition[1], partitions.setting_key(point), seed
    )
    try:
        if not loop.subset_written:
            partitions.write_subset(results, loop.subset, loop.labels, loop.n)
            loop.subset_written = True
        partitions.write(results, own)
        peers = partitions.read(results, epoch, embeddings=False, limit=criteria.ONLINE_PEERS)
    except OSError as e:  # storage unreachable: the trial trains on; its criteria are missing for this epoch
        print(f"warning: trial {trial_id}: partition of epoch {epoch} not stored: {e}", file=sys.stderr)
        return dict.fromkeys(criteria.ONLINE, float("nan"))
    return criteria.online(own, peers)


def ray_trainable(
    point: dict[str, Any],
    plan: SweepPlan,
    datasets: dict[str, Any] | None = None,
    results: str | None = None,
) -> None:
    """Ray Tune function trainable. ``point`` is the trial's point of the search space (plus ``arm``), as Ray
    holds it now (Ray's ``trial.config``; PBT mutates it); ``plan`` what every trial of the sweep shares; ``datasets`` the driver's
    decoded datasets in Ray's object store (``dataset_key(data) -> ObjectRef``), used instead of loading here;
    ``results`` the sweep's folder (path or URI), where the trial stores its partitions
    (:mod:`tuneclust.partitions`)."""
    import ray
    from ray import tune

    from tuneclust import raycompat

    trial = plan.trial(point)
    device = select_device(trial.gpu, ray.get_gpu_ids() if trial.gpu > 0 else [])
    shared = (datasets or {}).get(dataset_key(trial.data))
    dataset = ray.get(shared) if shared is not None else None
    trial_id = tune.get_context().get_trial_id()
    loop = TrialLoop(trial, device, dataset=dataset, label=f"trial {trial_id}")
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        state = retrying(lambda: _restore_state(checkpoint), f"trial {trial_id}: restoring its checkpoint")
        loop.load(state)
    for result in loop.run():
        if results:
            result.update(share_partition(loop, results, trial_id, dict(point), int(result["epoch"])))
        with tempfile.TemporaryDirectory() as d:
            torch.save(loop.state(), Path(d) / STATE_FILE)
            retrying(
                lambda r=result, d=d: raycompat.report_checkpoint(r, d),
                f"trial {trial_id}: checkpoint of epoch {result['epoch']}",
            )


def _restore_state(checkpoint: Any) -> dict[str, Any]:
    """The trial state in the checkpoint Ray handed the trial (or in the one that superseded it)."""
    from ray import tune

    source = available_checkpoint(checkpoint.filesystem, checkpoint.path)
    if source != checkpoint.path:
        print(superseded_line(checkpoint.path, source), file=sys.stderr)
        checkpoint = tune.Checkpoint(source, filesystem=checkpoint.filesystem)
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
