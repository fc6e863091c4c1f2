"""A sweep read back from its folder or URI: its Parquet tables (:func:`load_results`), its stored spec typed by
the Spec model (:func:`read_stored_spec`), several sweeps pooled with a ``dataset`` column (:func:`load_trials`,
:func:`load_finished`, :func:`load_epochs`) and, under early stopping, ``final.*`` values at the equal budget: the
last evaluation every finished trial reached (:func:`at_equal_budget`). No statistics and no drawing here."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from tuneclust.metrics import metric_mode
from tuneclust.spec import Budget, Spec, SpecError, validate_spec
from tuneclust.storage import Location, locate
from tuneclust.tables import read_tables
from tuneclust.yamlsafe import YamlError, decode, load

CONFIG = "config."
SEED = "config.seed"
SweepDirs = str | Path | Iterable[str | Path]


def load_results(sweep_dir: str | Path | Location) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) of a sweep folder or URI (:func:`tuneclust.tables.read_tables`: the whole tables, or
    the per-trial parts a crashed driver left); ``epochs`` is empty if no evaluation was recorded."""
    return read_tables(sweep_dir)


# --------------------------------------------------------------------------------------------- stored spec
def read_stored_spec(sweep_dir: str | Path | Location, validate: bool = False) -> Spec | None:
    """The spec a sweep stored beside its results (``spec.yaml``; None when there is none), parsed like a spec
    file (:mod:`tuneclust.yamlsafe`). ``validate`` (``--resume`` runs it again): validated in full, as a spec file
    is (:class:`SpecError`); else :func:`typed_spec` (results may be read where its data and methods are not)."""
    path = locate(sweep_dir) / "spec.yaml"
    if not path.exists():
        return None
    try:
        raw = load(decode(path.read_bytes()))
    except YamlError as e:
        raise SpecError(str(path), "", str(e)) from None
    if validate:
        return validate_spec(raw, str(path))
    return typed_spec(raw if isinstance(raw, dict) else {}, locate(sweep_dir).name)


def spec_or_defaults(sweep_dir: str | Path | Location) -> Spec:
    """:func:`read_stored_spec`, or the defaults (``typed_spec({})``) for a folder that has none."""
    spec = read_stored_spec(sweep_dir)
    return spec if spec is not None else typed_spec({}, locate(sweep_dir).name)


def typed_spec(raw: dict[str, Any], name: str = "stored") -> Spec:
    """``raw`` as a :class:`Spec` by the model's structure only (no method, dataset or data-root checks), tolerant
    of an older or partial stored spec: a top-level section the model does not accept takes its default; a missing
    ``name`` is ``name``, ``method`` empty, ``budget.epochs`` 0 (unknown)."""
    try:
        return Spec.model_validate_json(json.dumps(raw), strict=True)
    except ValidationError:
        pass
    fields: dict[str, Any] = {"name": name, "method": "", "budget": Budget.model_construct(epochs=0)}
    for key, value in raw.items():
        info = Spec.model_fields.get(key)
        if info is None:
            continue
        try:
            fields[key] = TypeAdapter(info.annotation).validate_python(value)
        except (ValidationError, TypeError, ValueError):
            continue
    return Spec.model_construct(**fields)


def objective(spec: Spec, metric: str | None = None) -> tuple[str, str]:
    """(metric, mode): ``metric`` (default the spec's objective) and its direction: :attr:`Spec.mode` for the
    spec's own objective, else the metric's natural one."""
    metric = metric or spec.objective.metric
    return metric, spec.mode if metric == spec.objective.metric else metric_mode(metric)


def param_column(key: str) -> str:
    """The trials-table column of a search key: ``data.<f>`` as it is, else ``config.<key>``."""
    return key if key.startswith("data.") else f"{CONFIG}{key}"


def searched_params(spec: Spec, trials: pd.DataFrame) -> list[str]:
    """Columns of the searched keys (``config.<k>`` or ``data.<f>``) that vary across the trials."""
    cols = [param_column(k) for k in spec.search]
    return [c for c in cols if c in trials and trials[c].nunique(dropna=False) > 1]


def arm_order(sweep_dirs: SweepDirs) -> list[str]:
    """The study's arms in the order its stored spec lists them (first folder that has an ablation)."""
    for d in _dirs(sweep_dirs):
        spec = read_stored_spec(d)
        if spec is not None and spec.ablation:
            return list(spec.ablation)
    return []


# ------------------------------------------------------------------------------------------------- datasets
def _dirs(sweep_dirs: SweepDirs) -> list[str | Path]:
    return [sweep_dirs] if isinstance(sweep_dirs, str | Path) else list(sweep_dirs)


def _dataset_label(name: str, root: str | None) -> str:
    """An ``imagefolder`` dataset is named by its folder, an ``npz`` file by its stem; others keep their name."""
    if root and name == "imagefolder":
        return Path(root).name
    if root and name == "npz":
        return Path(root).stem
    return name


def dataset_name(sweep_dir: str | Path) -> str:
    """The dataset of a sweep, from its stored spec's ``data.name`` (the folder's name if it has no spec);
    ``imagefolder`` is named by its ``data.root`` folder (``imagenet10``), ``npz`` by the file's stem."""
    return _dataset_label(*_stored_data(sweep_dir))


def _stored_data(sweep_dir: str | Path) -> tuple[str, str | None]:
    """(``data.name``, ``data.root``) of the stored spec; (the folder's name, None) without one."""
    spec = read_stored_spec(sweep_dir)
    return (spec.data.name, spec.data.root) if spec is not None else (locate(sweep_dir).name, None)


def load_trials(sweep_dirs: SweepDirs) -> pd.DataFrame:
    """Every trial (any status) of one or more sweep folders, pooled, at the equal budget
    (:func:`at_equal_budget`), with a ``dataset`` column: the trial's ``data.name`` (several datasets can be one
    sweep's search dimension), else :func:`dataset_name` of its folder (``imagefolder``/``npz``: as there)."""
    frames = []
    for d in _dirs(sweep_dirs):
        trials = at_equal_budget(*load_results(d))
        default, root = _stored_data(d)
        names = trials["data.name"].fillna(default) if "data.name" in trials else default
        names = pd.Series(names, index=trials.index, dtype=object)
        trials["dataset"] = [_dataset_label(n, root) for n in names]
        frames.append(trials)
    out = pd.concat(frames, ignore_index=True)
    budgets = {f.attrs.get("budget_epoch") for f in frames} - {None}
    if budgets:
        out.attrs["budget_epoch"] = min(budgets)
    return out


def load_finished(sweep_dirs: SweepDirs, metric: str | None = "final.acc") -> pd.DataFrame:
    """The finished trials of :func:`load_trials`: ``status`` ``TERMINATED`` (errored trials are dropped even if
    they were evaluated) and, unless ``metric`` is None, ``metric`` (a trials-table column) not NaN; a table
    without that column gives no rows. The index is 0..n-1."""
    done = finished(load_trials(sweep_dirs))
    if metric is not None:
        done = done[done[metric].notna()] if metric in done else done.iloc[0:0]
    return done.reset_index(drop=True)


def load_epochs(sweep_dirs: SweepDirs) -> pd.DataFrame:
    """Every evaluation of one or more sweep folders, pooled, with the ``dataset`` column of its trial and the
    trial's ``status`` (see :func:`load_trials`)."""
    dirs = _dirs(sweep_dirs)
    frames = [f for f in (load_results(d)[1] for d in dirs) if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["trial_id", "epoch", "dataset", "status"])
    epochs = pd.concat(frames, ignore_index=True)
    keep = load_trials(dirs)[["trial_id", "dataset", "status"]].drop_duplicates("trial_id")
    return epochs.drop(columns=[c for c in ("dataset", "status") if c in epochs]).merge(keep, on="trial_id")


# -------------------------------------------------------------------------------------------- equal budget
def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that ended normally (``status`` ``TERMINATED``; every row of a table without ``status``)."""
    return trials[trials["status"] == "TERMINATED"] if "status" in trials else trials


def rows_at(epochs: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """Each trial's evaluation at ``epoch`` (index ``trial_id``; the last one if it was reported twice)."""
    at = epochs[epochs["epoch"] == epoch] if "epoch" in epochs else epochs.iloc[0:0]
    return at.drop_duplicates("trial_id", keep="last").set_index("trial_id")


def equal_budget_epoch(trials: pd.DataFrame) -> int | None:
    """The last evaluation every finished trial reached (None when none finished)."""
    done = finished(trials)
    return int(done["epochs_run"].min()) if "epochs_run" in done and not done.empty else None


def at_equal_budget(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Under early stopping (finished trials ran different numbers of epochs), every finished trial's ``final.*``
    values are replaced by its values at the last evaluation all of them reached, so that no comparison mixes
    budgets; ``budget_epoch`` and ``stopped`` say so (also ``attrs["budget_epoch"]``, which
    :func:`tuneclust.render.statistic` names in every figure). A sweep without early stopping is returned
    unchanged."""
    done = trials["status"] == "TERMINATED" if "status" in trials else pd.Series(True, index=trials.index)
    if "epochs_run" not in trials or trials.loc[done, "epochs_run"].nunique() < 2 or epochs.empty:
        return trials
    at = equal_budget_epoch(trials)
    rows = rows_at(epochs, at)
    out = trials.copy()
    out["stopped"] = done & (out["epochs_run"] < out.loc[done, "epochs_run"].max())
    for col in [c for c in out.columns if c.startswith("final.")]:
        name = col.removeprefix("final.")
        if name in rows:
            out.loc[done, col] = out.loc[done, "trial_id"].map(rows[name]).to_numpy()
    out["budget_epoch"] = at
    out.attrs["budget_epoch"] = at
    return out
