"""A validated :class:`~tuneclust.spec.Spec` -> a ``ray.tune.Tuner`` -> results (or a restored Tuner).

The search space is :mod:`tuneclust.space`, Ray's searchers and schedulers :mod:`tuneclust.searchers` and
:mod:`tuneclust.schedulers`, the trial plan :mod:`tuneclust.plan`. Trial events reach MLflow and the Parquet tables
through :class:`tuneclust.callback.TrackingCallback` in this (driver) process; the sweep holds its lease
(:mod:`tuneclust.lease`) while it runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from tuneclust import lease, preflight, progress, raycompat, runtime, tables, tracking
from tuneclust.callback import TrackingCallback  # also where the saved state of earlier sweeps finds it
from tuneclust.data.registry import DataError, dataset_key, load_dataset, prepare_data
from tuneclust.schedulers import build_scheduler, pbt_keys
from tuneclust.searchers import build_searcher
from tuneclust.space import param_space
from tuneclust.spec import Spec
from tuneclust.storage import Location, StorageError, first_line, locate, retry_budget, retry_limit, transient
from tuneclust.trainable import available_checkpoint, ray_trainable, superseded_line


class SweepError(RuntimeError):
    """The sweep cannot start (bad storage state, missing resources); the CLI prints it and exits 2."""


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
    retry_errored: bool = False,
) -> Any:
    """Run (or resume) a sweep; returns Ray's ResultGrid. Raises :class:`SweepError` before writing anything
    if the results folder is in the wrong state, another driver runs this sweep (its lease, :mod:`tuneclust.lease`;
    ``takeover`` takes it anyway) or the cluster cannot host a trial. The lease is held until this returns.
    ``retry_errored`` (with ``resume``): the trials that ended ERROR run again from their last checkpoint."""
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
        held = lease.acquire(out, takeover=takeover, on_lost=_stop_displaced)
    except lease.LeaseError as e:
        raise SweepError(str(e)) from None
    except OSError as e:
        raise SweepError(f"{out}: cannot take the sweep's lease: {first_line(e)}") from None
    try:
        _check_state(out, resume, overwrite)
        return _run(spec, root, out, mlflow_uri, storage=storage, resume=resume, overwrite=overwrite,
                    address=address, verbose=verbose, retry_errored=retry_errored)  # fmt: skip
    finally:
        held.release()


EXIT_DISPLACED = 3
"""This driver's lease was taken over by another driver: it stopped at once, without writing."""


def _stop_displaced(line: str) -> None:
    """Another driver took this sweep's lease (``--takeover``, or this one's heartbeat stopped for over a minute,
    e.g. a suspended laptop): end this process now, so that two drivers never write the same sweep. Nothing more
    is written (no table, state or MLflow call); the Ray this driver started, and its trials, end with it."""
    print(f"error: {line}; this driver stops without writing (that driver owns the sweep)", file=sys.stderr,
          flush=True)  # fmt: skip
    os._exit(EXIT_DISPLACED)


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
    retry_errored: bool = False,
) -> Any:
    """:func:`run_sweep` once its checks passed and its lease is held: start Ray, write the spec, fit."""
    _prepare_data(spec)
    _start_ray(spec, address, verbose)
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
    tuner = _tuner(spec, root, out, trainable, spec_text, mlflow_uri, resume, verbose, retry_errored)
    try:
        return tuner.fit()  # the callback writes the whole tables at the end of the experiment
    except BaseException as e:
        # storage may be what failed: do not wait its whole retry budget
        with retry_limit(CONSOLIDATE_RETRY_S), contextlib.suppress(OSError):
            _consolidate(out)  # Ctrl-C or a driver error: the whole tables still hold everything reported
        if (cause := storage_cause(e)) is not None:
            raise SweepError(unreachable_line(out, cause)) from e
        raise


def _start_ray(spec: Spec, address: str | None, verbose: int) -> None:
    """Connect to ``address`` or start a local Ray (once per process), shipping the spec's plugin code."""
    import ray

    progress.silence_ray(verbose)
    if ray.is_initialized():
        return
    if address is None:  # this driver starts Ray: first stop what a killed driver's Ray left behind
        raycompat.warn(raycompat.clean_orphans())
        raycompat.mark_driver()
    native: list[str] = []  # what Ray's core printed while connecting (a cluster's refusal, e.g. its token)
    try:
        runtime_env = _ship_plugins(spec, verbose)  # says what it ships: before stderr is captured
        with progress.native_stderr_captured(native) if address else contextlib.nullcontext():
            ray.init(
                address=address,
                runtime_env=runtime_env,
                include_dashboard=False,
                log_to_driver=verbose >= progress.RAY_REPORTER,
                logging_level="INFO" if verbose >= progress.RAY_REPORTER else "ERROR",
            )
    except Exception as e:  # no cluster there, a missing auth token, ...: one line, not Ray's traceback
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray"
        if "InvalidAuthToken" in "".join(native) + str(e):
            raise SweepError(
                f"could not {where}: it uses token authentication and this driver's token is missing or wrong; "
                "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token "
                "(`ray get-auth-token` on its head)"
            ) from None
        raise SweepError(f"could not {where}: {type(e).__name__}: {first_line(e)}") from None
    if verbose >= progress.RAY_REPORTER:
        sys.stderr.write("".join(native))


def _tuner(
    spec: Spec,
    root: Location,
    out: Location,
    trainable: Any,
    spec_text: str,
    mlflow_uri: str | None,
    resume: bool,
    verbose: int,
    retry_errored: bool = False,
) -> Any:
    """A new ``tune.Tuner`` for the sweep, or the interrupted one restored from ``out`` (``resume``; with
    ``retry_errored`` its errored trials run again from their last checkpoints)."""
    fs = None if root.local else root.fs  # a URI: Ray's checkpoints and experiment state go through it too
    if resume:
        tuner = tune.Tuner.restore(
            out.path, trainable, resume_unfinished=True, resume_errored=retry_errored, storage_filesystem=fs
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
    first = first_line(e, 80)
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
    if tables.has_tables(out):
        tables.ResultTables(out, resume=True).consolidate()


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
