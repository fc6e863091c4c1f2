"""A validated :class:`~tuneclust.spec.Spec` -> a ``ray.tune.Tuner`` -> results (or a restored Tuner).

Searchers: ``grid`` and ``random`` use Ray's variant generator (grid dimensions crossed, random ones sampled,
seeded); ``optuna`` runs a seeded TPE study inside every *cell* of the grid (grid values x ablation arms), so a
grid mixed with Optuna is exhaustive over the grid and adaptive over the rest (:class:`CellSearcher`).
Trial events reach MLflow and the Parquet tables through :class:`TrackingCallback` in this (driver) process.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.search import Searcher

from tuneclust import tracking
from tuneclust.data.registry import DataError, prepare_data
from tuneclust.methods import get_method
from tuneclust.spec import Asha, Hyperband, Median, Pbt, SearchDim, Spec
from tuneclust.trainable import ray_trainable

RAY_KEYS = {
    "time_this_iter_s", "timestamp", "pid", "hostname", "node_ip", "config", "trial_id", "date", "done",
    "training_iteration", "iterations_since_restore", "time_since_restore", "checkpoint_dir_name",
    "should_checkpoint", "experiment_tag",
}  # fmt: skip


class SweepError(RuntimeError):
    """The sweep cannot start (bad storage state, missing resources); the CLI prints it and exits 2."""


def domain(dim: SearchDim) -> Any:
    """The Ray Tune domain of one search dimension (``randint`` is [low, high) like Ray and numpy)."""
    v = dim.value
    return {
        "grid": lambda: tune.grid_search(list(v)),
        "choice": lambda: tune.choice(list(v)),
        "uniform": lambda: tune.uniform(v[0], v[1]),
        "loguniform": lambda: tune.loguniform(v[0], v[1]),
        "randint": lambda: tune.randint(v[0], v[1]),
        "quniform": lambda: tune.quniform(v[0], v[1], v[2]),
    }[dim.kind]()


def param_space(spec: Spec) -> dict[str, Any]:
    """Ray's param space for the grid/random searchers: grids crossed, the rest sampled, arms a grid."""
    grid = spec.grid_dims()
    space: dict[str, Any] = {k: tune.grid_search(v) for k, v in grid.items()}
    space.update({k: domain(d) for k, d in spec.sampled_dims().items()})
    space["arm"] = tune.grid_search(spec.arms) if spec.ablation else ""
    return space


class CellSearcher(Searcher):
    """Optuna TPE within each grid cell: every cell gets ``per_cell`` trials from its own seeded study."""

    def __init__(self, spec: Spec) -> None:
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        super().__init__(metric=spec.objective.metric, mode=spec.mode)
        self.cells = spec.cells()
        sampled = {k: domain(d) for k, d in spec.sampled_dims().items()}
        per_cell = spec.num_samples if sampled else 1
        seed, n_startup = spec.searcher.seed, spec.searcher.n_startup_trials
        self.searchers = [
            OptunaSearch(
                space=sampled,
                metric=spec.objective.metric,
                mode=spec.mode,
                sampler=TPESampler(seed=seed + i, n_startup_trials=n_startup),
            )
            if sampled
            else None
            for i in range(len(self.cells))
        ]
        self.remaining = [per_cell] * len(self.cells)
        self.owner: dict[str, int] = {}
        self.cursor = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # metric, mode and space were fixed at construction

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for _ in range(len(self.cells)):
            i, self.cursor = self.cursor, (self.cursor + 1) % len(self.cells)
            if self.remaining[i] > 0:
                break
        else:
            return Searcher.FINISHED
        self.remaining[i] -= 1
        self.owner[trial_id] = i
        point = dict(self.cells[i])
        if self.searchers[i] is not None:
            point.update(self.searchers[i].suggest(trial_id))
        return point

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        s = self.searchers[self.owner[trial_id]] if trial_id in self.owner else None
        if s is not None:
            s.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        s = self.searchers[self.owner[trial_id]] if trial_id in self.owner else None
        if s is not None:
            s.on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def build_searcher(spec: Spec) -> Any:
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if spec.searcher.type == "optuna":
        searcher: Any = CellSearcher(spec)
        return ConcurrencyLimiter(searcher, spec.max_concurrent) if spec.max_concurrent else searcher
    return BasicVariantGenerator(random_state=spec.searcher.seed, max_concurrent=spec.max_concurrent or 0)


def build_scheduler(spec: Spec) -> Any:
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    s = spec.scheduler
    if isinstance(s, Asha):
        return ASHAScheduler(
            time_attr=s.time_attr,
            max_t=s.max_t or spec.budget.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            brackets=s.brackets,
        )
    if isinstance(s, Hyperband):
        return HyperBandScheduler(
            time_attr=s.time_attr, max_t=s.max_t or spec.budget.epochs, reduction_factor=s.reduction_factor
        )
    if isinstance(s, Median):
        return MedianStoppingRule(
            time_attr=s.time_attr, grace_period=s.grace_period, min_samples_required=s.min_samples_required
        )
    if isinstance(s, Pbt):
        keys = s.hyperparam_mutations or list(spec.sampled_dims())
        return PopulationBasedTraining(
            time_attr=s.time_attr,
            perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={k: domain(spec.search[k]) for k in keys},
            quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
        )
    return FIFOScheduler()


def trial_identity(spec: Spec, point: dict[str, Any]) -> dict[str, Any]:
    """The columns that identify a trial: arm, every resolved method config key, the data fields."""
    cfg, data = spec.resolve(point)
    resolved = get_method(spec.method).Config.model_validate(cfg).model_dump()
    ident: dict[str, Any] = {"arm": point.get("arm", "")}
    ident.update({f"config.{k}": v for k, v in resolved.items()})
    ident["data.name"] = data["name"]
    ident.update({k: v for k, v in point.items() if k.startswith("data.")})
    return ident


def _error_line(trial: Any) -> str:
    """The last line of a trial's error (the exception itself, not the traceback)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "trial failed (no error message recorded)"


class TrackingCallback(tune.Callback):
    """Forwards trial events to MLflow and the Parquet tables. Picklable: Ray stores it in ``tuner.pkl`` and
    brings it back on ``--resume``; the live MLflow client and tables are recreated in :meth:`setup`."""

    def __init__(self, spec: Spec, sweep_dir: Path, spec_text: str, mlflow_uri: str | None) -> None:
        self.spec = spec
        self.sweep_dir = sweep_dir
        self.spec_text = spec_text
        self.mlflow_uri = mlflow_uri
        self._live: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = {}
        return state

    def setup(self, **info: Any) -> None:
        resume = (self.sweep_dir / tracking.TRIALS_FILE).exists() or (
            self.sweep_dir / tracking.MLFLOW_STATE
        ).exists()
        self._live = {"tables": tracking.ResultTables(self.sweep_dir, resume), "idents": {}, "last": {}}
        if self.mlflow_uri:
            spec = self.spec
            tags = {
                "tuneclust.sweep": spec.name,
                "tuneclust.kind": "sweep",
                "method": spec.method,
                "dataset": spec.data.name,
                "searcher": spec.searcher.type,
                "scheduler": spec.scheduler.type,
            }
            experiment = spec.tracking.mlflow.experiment or spec.name
            self._live["mlflow"] = tracking.MlflowTracker(
                self.mlflow_uri, experiment, self.sweep_dir, self.spec_text, tags, resume
            )

    @property
    def tables(self) -> tracking.ResultTables:
        return self._live["tables"]

    def _ident(self, trial: Any) -> dict[str, Any]:
        idents = self._live["idents"]
        if trial.trial_id not in idents:
            idents[trial.trial_id] = trial_identity(self.spec, dict(trial.config))
        return idents[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ident = self._ident(trial)
        mlf = self._live.get("mlflow")
        if mlf is not None:
            seed = ident.get("config.seed", "")
            point = {k: v for k, v in trial.config.items() if k != "arm"}
            name = (
                "_".join([ident["arm"]] * bool(ident["arm"]) + [f"{k}={v}" for k, v in point.items()])
                or trial.trial_id
            )
            tags = {
                "method": self.spec.method,
                "dataset": ident["data.name"],
                "arm": ident["arm"],
                "seed": seed,
            }
            mlf.start_trial(trial.trial_id, name[:250], ident, tags)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        values = {
            k: v
            for k, v in result.items()
            if k not in RAY_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
        }
        self._live["last"][trial.trial_id] = values
        ident = self._ident(trial)
        self.tables.add_eval(trial.trial_id, {"arm": ident["arm"], **ident}, values)
        mlf = self._live.get("mlflow")
        if mlf is not None:
            mlf.log_metrics(
                trial.trial_id, values, step=int(values.get("epoch", result.get("training_iteration", 0)))
            )

    def _finish(self, trial: Any, status: str, error: str | None) -> None:
        ident = self._ident(trial)
        last = self._live["last"].get(trial.trial_id)
        wall = float(last.get("time_total_s", 0.0)) if last else None
        self.tables.finish(trial.trial_id, ident, status, error, wall)
        mlf = self._live.get("mlflow")
        if mlf is not None:
            mlf.end_trial(trial.trial_id, status, error)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "TERMINATED", None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "ERROR", _error_line(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.tables.flush()
        mlf = self._live.get("mlflow")
        if mlf is not None:
            statuses = [t.status for t in trials]
            mlf.end(
                {"trials": len(trials), "trials_errored": statuses.count("ERROR")},
                "FINISHED" if statuses.count("ERROR") < len(trials) else "FAILED",
            )


def _trial_name(trial: Any) -> str:
    return f"{trial.config.get('arm') or 'trial'}_{trial.trial_id}"


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def sweep_dir(spec: Spec, storage: str | None = None) -> Path:
    return Path(storage or spec.storage).expanduser().resolve() / spec.name


def run_sweep(
    spec: Spec,
    *,
    storage: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    verbose: int = 1,
) -> Any:
    """Run (or resume) a sweep; returns Ray's ResultGrid. Raises :class:`SweepError` before writing anything
    if the results folder is in the wrong state or the cluster cannot host a trial."""
    import ray

    out = sweep_dir(spec, storage)
    started = (out / "tuner.pkl").exists()
    if resume and not started:
        raise SweepError(f"{out}: nothing to resume (no earlier sweep with this name there)")
    if not resume and out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SweepError(
                f"{out} already holds results: pass --resume to continue it, or --overwrite to start over"
            )
    _prepare_data(spec)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose > 1)
    if spec.resources.gpu > 0 and not ray.cluster_resources().get("GPU", 0) and address is None:
        raise SweepError(
            "resources.gpu: the spec asks for GPUs but this machine has none; use --smoke, or --set resources.gpu=0"
        )
    if overwrite and not resume and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    spec_text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    if not resume:
        (out / "spec.yaml").write_text(spec_text)
    mlflow_uri = None
    if spec.tracking.mlflow.enabled:
        mlflow_uri = spec.tracking.mlflow.uri or tracking.default_tracking_uri()
    payload = {
        "method": spec.method,
        "config": spec.config,
        "ablation": spec.ablation,
        "data": spec.data.model_dump(),
        "epochs": spec.budget.epochs,
        "eval_every": spec.budget.eval_every,
        "cpu": spec.resources.cpu,
        "gpu": spec.resources.gpu,
    }
    trainable = tune.with_resources(
        tune.with_parameters(ray_trainable, payload=payload),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state: at most 5 s behind a crash
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        tuner = tune.Tuner.restore(str(out), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={} if spec.searcher.type == "optuna" else param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric,
                mode=spec.mode,
                search_alg=build_searcher(spec),
                scheduler=build_scheduler(spec),
                num_samples=spec.num_trials() if spec.searcher.type == "optuna" else spec.num_samples,
                max_concurrent_trials=spec.max_concurrent,
                reuse_actors=True,  # one worker process serves many trials: torch is imported once, not per trial
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(out.parent),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[TrackingCallback(spec, out, spec_text, mlflow_uri)],
                verbose=verbose,
            ),
        )
    return tuner.fit()


def _prepare_data(spec: Spec) -> None:
    """Download and cache torchvision data once in the driver (trials would race); offline errors surface here."""
    for data in spec.data_configs():
        try:
            prepare_data(data)
        except DataError as e:
            raise SweepError(f"data: {e}") from None
