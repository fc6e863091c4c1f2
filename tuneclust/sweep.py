"""A validated :class:`~tuneclust.spec.Spec` -> a ``ray.tune.Tuner`` -> results (or a restored Tuner).

The search space and searchers live in :mod:`tuneclust.space`, the trial plan in :mod:`tuneclust.plan`. Trial
events reach MLflow and the Parquet tables through :class:`TrackingCallback` in this (driver) process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from tuneclust import answer, lease, preflight, progress, raycompat, render, report, runtime, tracking
from tuneclust.data.registry import DataError, dataset_key, load_dataset, prepare_data
from tuneclust.schedulers import build_scheduler, pbt_keys
from tuneclust.searchers import build_searcher
from tuneclust.space import param_space
from tuneclust.spec import Spec
from tuneclust.storage import Location, StorageError, locate, retry_budget, retry_limit, transient
from tuneclust.trainable import available_checkpoint, ray_trainable, superseded_line

RAY_KEYS = {
    "time_this_iter_s", "timestamp", "pid", "hostname", "node_ip", "config", "trial_id", "date", "done",
    "training_iteration", "iterations_since_restore", "time_since_restore", "checkpoint_dir_name",
    "should_checkpoint", "experiment_tag",
}  # fmt: skip


class SweepError(RuntimeError):
    """The sweep cannot start (bad storage state, missing resources); the CLI prints it and exits 2."""


class TrackingCallback(tune.Callback):
    """Forwards trial events to MLflow and the Parquet tables. Picklable: Ray stores it in its saved state and
    brings it back on ``--resume``; the live MLflow client and tables are recreated in :meth:`setup`."""

    def __init__(self, spec: Spec, sweep_dir: Location, spec_text: str, mlflow_uri: str | None) -> None:
        self.spec = spec
        self.plan = spec.sweep_plan()
        self.mutated = pbt_keys(spec)
        self.sweep_dir = sweep_dir
        self.spec_text = spec_text
        self.mlflow_uri = mlflow_uri
        self._live: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_live"] = {}
        return state

    def setup(self, **info: Any) -> None:
        resume = tracking.has_tables(self.sweep_dir) or (self.sweep_dir / tracking.MLFLOW_STATE).exists()
        self._live = {
            "tables": tracking.ResultTables(self.sweep_dir, resume),
            "idents": {},
            "initial": {},
            "runtime": {},
            "last": {},
            "started": {},
        }
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
                self.mlflow_uri,
                experiment,
                self.sweep_dir,
                self.spec_text,
                tags,
                resume,
                params=sweep_params(spec),
                note=sweep_note(spec),
            )

    @property
    def tables(self) -> tracking.ResultTables:
        return self._live["tables"]

    def _ident(self, trial: Any, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The trial's table columns for ``config`` (default: its current config; PBT changes it)."""
        config = dict(trial.config if config is None else config)
        key = (trial.trial_id, repr(sorted(config.items(), key=lambda kv: kv[0])))
        idents = self._live["idents"]
        if key not in idents:
            idents[key] = self.plan.identity(config)
        self._live["initial"].setdefault(trial.trial_id, idents[key])
        return idents[key]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._live["started"][trial.trial_id] = time.time()
        ident = self._ident(trial)
        mlf = self._live.get("mlflow")
        if mlf is not None:
            seed = ident.get("config.seed", "")
            name = progress.trial_label(dict(trial.config)) or trial.trial_id
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
        runtime = {k: v for k, v in result.items() if k.startswith("runtime.") and isinstance(v, str)}
        if runtime and trial.trial_id not in self._live["runtime"]:  # what the trial actually ran with
            self._live["runtime"][trial.trial_id] = runtime
            if (mlf := self._live.get("mlflow")) is not None:
                mlf.set_trial_tags(trial.trial_id, runtime)
        ident = self._ident(trial, result.get("config"))  # the config in force at this evaluation (PBT)
        self.tables.add_eval(trial.trial_id, ident, values)
        mlf = self._live.get("mlflow")
        if mlf is not None:
            mutated = {f"config.{k}": ident[f"config.{k}"] for k in self.mutated if f"config.{k}" in ident}
            mlf.log_metrics(
                trial.trial_id,
                {**values, **mutated},  # PBT: the mutated values as a history (MLflow params are immutable)
                step=int(values.get("epoch", result.get("training_iteration", 0))),
            )

    def _finish(self, trial: Any, status: str, error: str | None) -> None:
        ident = dict(self._ident(trial))  # the final config
        initial = self._live["initial"].get(trial.trial_id, ident)
        ident.update({f"initial.{k}": v for k, v in initial.items() if ident.get(k) != v})
        ident.update(self._live["runtime"].get(trial.trial_id, {}))
        last = self._live["last"].get(trial.trial_id)
        wall = float(last.get("time_total_s", 0.0)) if last else None
        started = self._live["started"].get(trial.trial_id)
        if status == "ERROR" and started is not None:  # it ran past its last report before it failed
            wall = max(wall or 0.0, time.time() - started)
        self.tables.finish(trial.trial_id, ident, status, error, wall)
        mlf = self._live.get("mlflow")
        if mlf is not None:
            with tempfile.TemporaryDirectory() as tmp:
                rows = self.tables.epochs.get(trial.trial_id, [])
                figures = render.trial_figures(rows, self.spec.objective.metric, Path(tmp), trial.trial_id)
                mlf.trial_summary(trial.trial_id, figures)
            mlf.end_trial(trial.trial_id, status, error)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "TERMINATED", None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "ERROR", raycompat.trial_error_line(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Record the ending honestly: Ray marks trials it stopped at Ctrl-C TERMINATED, but only trials that
        reached on_trial_complete/on_trial_error have a row; the others end KILLED in MLflow, as does the
        parent, and ``--resume`` continues them."""
        self.tables.flush()
        total = trial_total(self.spec, len(trials))
        counts = outcome(self.tables.trials, total)
        mlf = self._live.get("mlflow")
        if mlf is not None:
            ans = None
            if tracking.has_tables(self.sweep_dir):
                # beside the tables when they are local; on object storage only as MLflow artifacts (a temp folder)
                with tempfile.TemporaryDirectory() as tmp:
                    out = None if locate(self.sweep_dir).local else Path(tmp)
                    ans = answer.sweep_answer(self.sweep_dir)  # computed once: the cross-trial criteria cost
                    files = report.write_report(self.sweep_dir, out=out, ans=ans)
                    ranking = render.markdown_table(answer.ranking(self.sweep_dir).head(20))
                    mlf.sweep_summary(ranking, files, report.answer_markdown(ans) if ans else "")
            unfinished = [t.trial_id for t in trials if t.trial_id not in self.tables.trials]
            for trial_id in unfinished:
                mlf.end_trial(trial_id, "UNFINISHED")
            if counts["unfinished"]:
                mlf.end({}, "KILLED")
            else:  # the answer's numbers as metrics once, when every trial has ended (a resumed sweep too)
                if ans is not None:
                    mlf.log_metrics_parent(answer.answer_metrics(ans))
                mlf.end(
                    {"trials": total, "trials_errored": counts["errored"]},
                    "FINISHED" if counts["terminated"] else "FAILED",
                )
            # the calls buffered during an MLflow outage: replayed now, or what was lost is reported
            if (warning := mlf.close()) is not None:
                print(warning, file=sys.stderr, flush=True)


def trial_total(spec: Spec, known: int) -> int:
    """The sweep's number of trials: the spec's, or more if Ray knows more (``known``). Ray creates trials
    lazily, so after a Ctrl-C it may know fewer than the sweep has."""
    return max(known, spec.num_trials())


def outcome(rows: dict[str, dict[str, Any]], total: int) -> dict[str, int]:
    """Trials TERMINATED, ERROR and unfinished (stopped by Ctrl-C or never started) out of ``total``
    (:func:`trial_total`)."""
    statuses = [r.get("status") for r in rows.values()]
    done = {"terminated": statuses.count("TERMINATED"), "errored": statuses.count("ERROR")}
    return {**done, "unfinished": max(0, total - done["terminated"] - done["errored"])}


def sweep_outcome(out: Location, total: int) -> dict[str, int]:
    """:func:`outcome` from a sweep's ``trials.parquet`` (what the CLI reports after ``run_sweep``)."""
    rows = tracking.ResultTables(out, resume=True).trials if tracking.has_tables(out) else {}
    return outcome(rows, total)


def sweep_params(spec: Spec) -> dict[str, Any]:
    """The parent run's params: the study's fixed config (``config.<k>``), its search space (``search.<k>``),
    arms, data, budget, searcher, scheduler and objective."""
    params: dict[str, Any] = {f"config.{k}": v for k, v in spec.config.items()}
    for k, d in spec.search.items():
        params[f"search.{k}"] = f"{d.kind} {list(d.value) if isinstance(d.value, list | tuple) else d.value}"
    if spec.ablation:
        params["arms"] = ", ".join(spec.arms)
    params.update({f"data.{k}": v for k, v in spec.data.model_dump().items() if v is not None})
    params.update(
        {
            "budget.epochs": spec.budget.epochs,
            "budget.eval_every": spec.budget.eval_every,
            "searcher": spec.searcher.type,
            "scheduler": spec.scheduler.type,
            "objective": f"{spec.mode} {spec.objective.metric}",
            "trials": spec.num_trials(),
        }
    )
    return params


def sweep_note(spec: Spec) -> str:
    """The parent run's description (Markdown): the study, what it reproduces, and how it searches."""
    head = f"**{spec.name}**: {spec.method} on {spec.data.name}, {spec.num_trials()} trials"
    head += f" ({spec.searcher.type} search, {spec.scheduler.type} scheduler, {spec.mode} {spec.objective.metric})"
    return f"{head}\n\n{spec.description.strip()}" if spec.description else head


def _trial_name(trial: Any) -> str:
    return f"{trial.config.get('arm') or 'trial'}_{trial.trial_id}"


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def storage_root(spec: Spec, storage: str | None = None) -> Location:
    """The results root (``--storage`` or the spec's ``storage``) opened; :class:`SweepError` if it cannot be."""
    try:
        return locate(storage or spec.storage)
    except StorageError as e:
        raise SweepError(f"storage: {e}") from None


def sweep_dir(spec: Spec, storage: str | None = None) -> Location:
    """``<storage>/<name>``: a local folder or a folder on the storage URI's filesystem."""
    return storage_root(spec, storage) / spec.name


def run_sweep(
    spec: Spec,
    *,
    storage: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    verbose: int = 1,
    takeover: bool = False,
) -> Any:
    """Run (or resume) a sweep; returns Ray's ResultGrid. Raises :class:`SweepError` before writing anything
    if the results folder is in the wrong state, another driver runs this sweep (its lease, :mod:`tuneclust.lease`;
    ``takeover`` takes it anyway) or the cluster cannot host a trial. The lease is held until this returns."""
    raycompat.warn(raycompat.version_warning())
    root = storage_root(spec, storage)
    out = root / spec.name
    mlflow_uri = None
    if spec.tracking.mlflow.enabled:
        mlflow_uri = spec.tracking.mlflow.uri or tracking.default_tracking_uri()
    try:
        preflight.check_local(spec, Path(out.path) if out.local else out, mlflow_uri, storage, address)
    except preflight.PreflightError as e:
        raise SweepError(str(e)) from None
    try:
        held = lease.acquire(out, takeover=takeover)
    except lease.LeaseError as e:
        raise SweepError(str(e)) from None
    except OSError as e:
        raise SweepError(
            f"{out}: cannot take the sweep's lease: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None
    try:
        _check_state(out, resume, overwrite)
        return _run(spec, root, out, mlflow_uri, storage=storage, resume=resume, overwrite=overwrite,
                    address=address, verbose=verbose)  # fmt: skip
    finally:
        held.release()


def _check_state(out: Location, resume: bool, overwrite: bool) -> None:
    """The results folder fits the command: ``--resume`` needs an earlier sweep; a new one an empty folder."""
    if resume and not (out / raycompat.TUNER_STATE).exists():
        raise SweepError(f"{out}: nothing to resume (no earlier sweep with this name there)")
    if not resume and not overwrite and out.has_children(ignore=(lease.NAME,)):
        raise SweepError(
            f"{out} already holds results: pass --resume to continue it, or --overwrite to start over"
        )


def _run(
    spec: Spec,
    root: Location,
    out: Location,
    mlflow_uri: str | None,
    *,
    storage: str | None,
    resume: bool,
    overwrite: bool,
    address: str | None,
    verbose: int,
) -> Any:
    """:func:`run_sweep` once its checks passed and its lease is held: start Ray, write the spec, fit."""
    import ray

    _prepare_data(spec)
    progress.silence_ray(verbose)
    if not ray.is_initialized():
        if address is None:  # this driver starts Ray: first stop what a killed driver's Ray left behind
            raycompat.warn(raycompat.clean_orphans())
            raycompat.mark_driver()
        ray.init(
            address=address,
            runtime_env=_ship_plugins(spec, verbose),
            include_dashboard=False,
            log_to_driver=verbose >= progress.RAY_REPORTER,
            logging_level="INFO" if verbose >= progress.RAY_REPORTER else "ERROR",
        )
    if spec.resources.gpu > 0:
        try:
            print(runtime.mps_line(spec.runtime.mps, spec.resources.gpu), flush=True)
        except RuntimeError as e:
            raise SweepError(str(e)) from None
    if address is not None:
        try:
            preflight.check_cluster(spec)
        except preflight.PreflightError as e:
            raise SweepError(str(e)) from None
    datasets = _share_datasets(spec)
    if overwrite and not resume:
        out.clear(keep=(lease.NAME,))  # the lease stays: this driver holds it
    out.mkdir()
    spec_text = yaml.safe_dump(stored_spec(spec, storage), sort_keys=False)
    if not resume:
        (out / "spec.yaml").write_text(spec_text)
    trainable = tune.with_resources(
        tune.with_parameters(ray_trainable, plan=spec.sweep_plan(), datasets=datasets, results=out.uri),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state: at most 5 s behind a crash
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tuner = _tuner(spec, root, out, trainable, spec_text, mlflow_uri, resume, verbose)
    try:
        return tuner.fit()  # the callback writes the whole tables at the end of the experiment
    except BaseException as e:
        # storage may be what failed: do not wait its whole retry budget
        with retry_limit(CONSOLIDATE_RETRY_S), contextlib.suppress(OSError):
            _consolidate(out)  # Ctrl-C or a driver error: the whole tables still hold everything reported
        if (cause := storage_cause(e)) is not None:
            raise SweepError(unreachable_line(out, cause)) from e
        raise


def _tuner(
    spec: Spec,
    root: Location,
    out: Location,
    trainable: Any,
    spec_text: str,
    mlflow_uri: str | None,
    resume: bool,
    verbose: int,
) -> Any:
    """A new ``tune.Tuner`` for the sweep, or the interrupted one restored from ``out`` (``resume``)."""
    fs = None if root.local else root.fs  # a URI: Ray's checkpoints and experiment state go through it too
    if resume:
        tuner = tune.Tuner.restore(
            out.path, trainable, resume_unfinished=True, resume_errored=False, storage_filesystem=fs
        )
        _mark_deleted_checkpoints(tuner)
        _resume_output(tuner, spec, verbose)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec.space),
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric,
                mode=spec.mode,
                search_alg=build_searcher(spec.space, spec.objective.metric, spec.mode, spec.max_concurrent),
                scheduler=build_scheduler(spec),
                num_samples=spec.num_trials() if spec.searcher.type == "optuna" else spec.num_samples,
                max_concurrent_trials=spec.max_concurrent,
                reuse_actors=True,  # one worker process serves many trials: torch is imported once, not per trial
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=root.path,
                storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures, fail_fast=False),
                # PBT: an exploiting trial restores a donor's checkpoint when it next gets resources, however many
                # epochs later: keep them all (None); otherwise the last one is all early stopping and --resume need
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt_keys(spec) else 1),
                callbacks=[TrackingCallback(spec, out, spec_text, mlflow_uri), *_reporter(spec, verbose)],
                verbose=1 if verbose >= progress.RAY_REPORTER else 0,
            ),
        )
    return tuner


def _ship_plugins(spec: Spec, verbose: int) -> dict[str, Any] | None:
    """Ray's runtime_env that makes the spec's own method/data modules importable on every worker (or None)."""
    from tuneclust.data.registry import DATASETS
    from tuneclust.methods import METHODS
    from tuneclust.plugins import runtime_env

    env = runtime_env(spec.method, [d.name for d in spec.data_configs()], set(METHODS) | set(DATASETS))
    if env and verbose:
        shipped = env.get("working_dir") or ", ".join(env.get("py_modules", []))
        print(f"shipping {shipped} to the Ray workers (runtime_env) for {spec.method}", flush=True)
    return env


CONSOLIDATE_RETRY_S = 10.0
"""How long the whole tables are retried on the way out of a failed sweep (the part files already hold them)."""


def storage_cause(e: BaseException) -> OSError | None:
    """The transient storage error (:func:`tuneclust.storage.transient`) that ended a sweep, if one did: Ray wraps
    a callback's error in its own (``TuneError``), so the chain of causes is searched."""
    seen = 0
    while e is not None and seen < 20:
        if transient(e):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def unreachable_line(out: Location, e: OSError) -> str:
    """One line: storage was unreachable for longer than the retries allow; what is kept and what to run."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    first = first if len(first) <= 80 else first[:77] + "..."
    return (
        f"storage unreachable for over {retry_budget():.0f} s ({first}); the sweep stopped, its results so far are "
        f"in {out.uri.partition('?')[0]} — when storage is back, rerun the same command with --resume"
    )


def _resume_output(tuner: Any, spec: Spec, verbose: int) -> None:
    """``--quiet``/``--verbose`` of the resuming command, not of the interrupted one: Ray restores the run config
    (callbacks, verbosity) from its saved state, so its progress reporter is swapped for this command's."""
    ray_verbose = 1 if verbose >= progress.RAY_REPORTER else 0
    if not raycompat.replace_output(tuner, _reporter(spec, verbose), progress.ProgressCallback, ray_verbose):
        print(
            "warning: --quiet/--verbose not applied on this resume (Ray's tuner layout changed)",
            file=sys.stderr,
        )


def _mark_deleted_checkpoints(tuner: Any) -> None:
    """Before a resumed sweep restores its trials: where Ray's saved experiment state names a checkpoint it had
    already deleted (the driver died between the two), mark it so Ray's existence check passes; the trial then
    restores from the checkpoint the driver last registered (:func:`tuneclust.trainable.available_checkpoint`)."""
    try:
        results = list(tuner.get_results())
    except RuntimeError:  # Ray could not read its experiment state: Tuner.fit says why
        return
    for result in results:
        ck = result.checkpoint
        if ck is None:
            continue
        try:
            chosen = available_checkpoint(ck.filesystem, ck.path)
        except FileNotFoundError as e:
            print(f"warning: {e}; that trial cannot be resumed", file=sys.stderr)
            continue
        if chosen != ck.path:
            print(superseded_line(ck.path, chosen), file=sys.stderr)


def _consolidate(out: Location) -> None:
    """Write the whole tables from the part files (end of a sweep, also after an error or Ctrl-C)."""
    if tracking.has_tables(out):
        tracking.ResultTables(out, resume=True).consolidate()


def stored_spec(spec: Spec, storage: str | None) -> dict[str, Any]:
    """The spec as stored beside the results: with the storage the sweep actually used (``--storage``)."""
    data = spec.model_dump(mode="json")
    if storage:
        data["storage"] = storage
    return data


def _reporter(spec: Spec, verbose: int) -> list[tune.Callback]:
    """The progress line (default verbosity); none when quiet or when Ray's own reporter prints."""
    if verbose != progress.PROGRESS:
        return []
    total = spec.num_trials()
    return [progress.ProgressCallback(total, spec.budget.epochs, spec.objective.metric, spec.mode)]


def _prepare_data(spec: Spec) -> None:
    """Download and cache torchvision data once in the driver (trials would race); offline errors surface here."""
    for data in spec.data_configs():
        try:
            prepare_data(data)
        except DataError as e:
            raise SweepError(f"data: {e}") from None


def _share_datasets(spec: Spec) -> dict[str, Any]:
    """Load each dataset of the sweep once in the driver and put it in Ray's object store, so a trial on any
    node fetches it from there (once per node) instead of needing files only the driver's node has.

    A dataset above ``data.object_store_max_mb`` is not shared: each trial loads it from ``data.root`` (which
    must then be a path every node can read). Trials whose data section differs from these (a searched
    ``data.<field>`` other than the name) load their own.

    Returns:
        ``dataset_key(data) -> ObjectRef`` for the shared datasets.
    """
    import ray

    refs: dict[str, Any] = {}
    for data in spec.data_configs():
        if data.object_store_max_mb <= 0:
            continue  # sharing off: every trial loads from data.root
        try:
            ds = load_dataset(data)
        except DataError as e:
            raise SweepError(f"data: {e}") from None
        size_mb = (ds.x.element_size() * ds.x.nelement()) / 2**20
        if size_mb <= data.object_store_max_mb:
            refs[dataset_key(data.model_dump())] = ray.put(ds)
    return refs
