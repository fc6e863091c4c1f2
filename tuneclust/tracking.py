"""Where results go: MLflow (one parent run per sweep, one child run per trial) and two Parquet tables.

Only this module imports mlflow. Everything here runs in the sweep's driver process (Ray callbacks forward
trial events to it), so a sqlite store has one writer. Each evaluation rewrites only its trial's Parquet part
file (atomically), so a crash keeps every finished trial and what running trials had reported; the whole tables
are written at the end of a sweep. :func:`read_tables` is the one reader (whole tables + parts).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from tuneclust.metrics import metric_mode
from tuneclust.storage import Location, locate

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
MLFLOW_STATE = "mlflow.json"
PARTS_DIR = "tables"
"""Per-trial part files, ``tables/epochs/<trial_id>.parquet`` and ``tables/trials/<trial_id>.parquet``."""
LABELLED_SUFFIXES = ("acc", "nmi", "ari")
"""Metrics computed with the ground-truth labels: their best-over-evaluations is label-selected."""
COMPILE_COUNTS = {"compile_graph_breaks", "compile_cudagraph_skips"}
"""What a compiled trial reports of its compilation (tuneclust.runtime.CompileWatch): diagnostics, not scores."""
DIAGNOSTICS = {"lr", "images_per_s", "eval_time_s", "time_total_s", "clusters_used", "phase", "finetune_iter"}
DIAGNOSTICS |= {"eval_embed_s", "eval_kmeans_s", *COMPILE_COUNTS}
"""Reported values that are not scores: only their final value goes into trials.parquet."""
BOOKKEEPING = {"epoch", "step", "time_total_s", "images_per_s", "eval_time_s", "lr", "phase", "finetune_iter"}
BOOKKEEPING |= {"eval_embed_s", "eval_kmeans_s", *COMPILE_COUNTS}
"""Reported values that are not MLflow metrics (they would clutter every chart): ``epoch`` is the metrics' step,
the others become ``final.<name>`` tags of the trial's run when it ends (their history is in epochs.parquet).
Any other timing a trial reports (``*_s``) is bookkeeping too (:func:`is_bookkeeping`)."""
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment tag that makes MLflow 3's UI open an experiment on its runs table, not the GenAI overview."""
NOTE = "mlflow.note.content"
"""The tag MLflow's UI shows as a run's description (Markdown)."""
MLFLOW_UI = "http://127.0.0.1:5000"
"""Where ``mlflow ui --host 127.0.0.1`` serves (its default port)."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else MLflow's own default ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_bookkeeping(name: str) -> bool:
    """Not an MLflow metric: a :data:`BOOKKEEPING` name, or a timing a trial reports (``*_s``, not ``config.*``)."""
    return name in BOOKKEEPING or (name.endswith("_s") and "." not in name)


def runs_url(experiment_id: str, ui: str = MLFLOW_UI) -> str:
    """The MLflow UI page of an experiment's runs in the model-training view (MLflow 3 opens GenAI's overview)."""
    return f"{ui}/#/experiments/{quote(str(experiment_id), safe='')}/runs?workflowType=machine_learning"


def sweep_experiment_id(sweep_dir: Location | Path | str, uri: str, experiment: str) -> str | None:
    """The id of a sweep's MLflow experiment: from its ``mlflow.json``, else (a state written before the id was
    stored, or another store) looked up by name in the store at ``uri``. None without a ``mlflow.json`` (MLflow
    never started for it) or when the store does not answer."""
    try:
        state = json.loads((locate(sweep_dir) / MLFLOW_STATE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("experiment_id") and state.get("tracking_uri") == uri:
        return str(state["experiment_id"])
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 (a link in a closing message: never fail the sweep's exit over it)
        return None
    return exp.experiment_id if exp is not None else None


def is_label_metric(name: str) -> bool:
    return name in LABELLED_SUFFIXES or name.endswith(tuple(f"_{s}" for s in LABELLED_SUFFIXES))


def _cell(v: Any) -> Any:
    """A value Parquet can hold in a column of scalars."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v, default=str)


def _write_parquet(df: pd.DataFrame, loc: Location) -> None:
    """Write a table as one whole file (atomic: a crash leaves the old file or the new one)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    loc.write_bytes(buf.getvalue())


class MlflowTracker:
    """Parent run per sweep (spec as artifact); child run per trial with params, metric history and tags."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        sweep_dir: Path,
        spec_text: str,
        sweep_tags: dict[str, str],
        resume: bool,
        params: dict[str, Any] | None = None,
        note: str = "",
    ) -> None:
        import mlflow  # noqa: F401  (fail early with a clear ImportError)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            artifacts = None
            if uri.startswith("sqlite:///"):
                artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        else:
            self.experiment_id = exp.experiment_id
        self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self.note = note
        self.bookkeeping: dict[str, dict[str, float]] = {}
        state_file = sweep_dir / MLFLOW_STATE
        self.children: dict[str, str] = {}
        if resume and state_file.exists():
            self.parent = json.loads(state_file.read_text())["parent_run_id"]
            self.client.update_run(self.parent, status="RUNNING")
            for run in self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{self.parent}'",
                max_results=50000,
            ):
                self.children[run.data.tags["tuneclust.trial_id"]] = run.info.run_id
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=sweep_tags.get("tuneclust.sweep"),
                tags={**sweep_tags, **({NOTE: note} if note else {})},
            )
            self.parent = run.info.run_id
            self.client.log_text(self.parent, spec_text, "spec.yaml")
            self._log_params(self.parent, params or {})
            state = {"parent_run_id": self.parent, "tracking_uri": uri, "experiment_id": self.experiment_id}
            state_file.write_text(json.dumps(state))

    def start_trial(self, trial_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if trial_id in self.children:  # resumed: it was left KILLED by an interrupted run
            self.client.update_run(self.children[trial_id], status="RUNNING")
            self.client.set_tag(self.children[trial_id], "status", "RUNNING")
            return
        all_tags = {
            "mlflow.parentRunId": self.parent,
            "tuneclust.trial_id": trial_id,
            "status": "RUNNING",
            **tags,
        }
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.children[trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        self._log_params(run.info.run_id, params)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params in batches of 100 (MLflow's limit per call); values cut at MLflow's 6000 characters."""
        from mlflow.entities import Param

        items = [Param(k, str(_cell(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, trial_id: str, values: dict[str, float], step: int) -> None:
        """Log a trial's scores at ``step`` (its epoch); bookkeeping values (:func:`is_bookkeeping`) are kept for
        its end tags."""
        from mlflow.entities import Metric

        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        book = self.bookkeeping.setdefault(trial_id, {})
        book.update({k: v for k, v in values.items() if is_bookkeeping(k)})
        batch = [
            Metric(k, float(v), now, step)
            for k, v in values.items()
            if not is_bookkeeping(k)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
        ]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[i : i + 1000])

    def set_trial_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        """Tags on a trial's child run (e.g. the runtime it actually used)."""
        from mlflow.entities import RunTag

        if (run_id := self.children.get(trial_id)) is not None:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_trial(self, trial_id: str, status: str, error: str | None = None) -> None:
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        self.client.set_tag(run_id, "status", status)
        if error:
            self.client.set_tag(run_id, "error", error[:5000])
        ending = {"TERMINATED": "FINISHED", "UNFINISHED": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(run_id, ending)

    def trial_summary(self, trial_id: str, figures: list[Path]) -> None:
        """Before a trial's run ends: its last bookkeeping values as ``final.<name>`` tags, and its
        figures as artifacts (``figures/``)."""
        run_id = self.children.get(trial_id)
        if run_id is None:
            return
        for k, v in self.bookkeeping.pop(trial_id, {}).items():
            self.client.set_tag(run_id, f"final.{k}", f"{v:.6g}" if isinstance(v, float) else str(v))
        for path in figures:
            self.client.log_artifact(run_id, str(path), "figures")

    def sweep_summary(self, ranking_markdown: str, files: list[Path], answer_markdown: str = "") -> None:
        """On the parent run: the answer and the ranking appended to its description, and the report's files as
        artifacts."""
        ranking = (
            f"## Answer\n\n{answer_markdown}\n\n## Ranking\n\n{ranking_markdown}"
            if answer_markdown
            else (f"## Ranking\n\n{ranking_markdown}")
        )
        note = f"{self.note}\n\n{ranking}" if self.note else ranking
        self.client.set_tag(self.parent, NOTE, note)
        for path in files:
            self.client.log_artifact(self.parent, str(path), "report")

    def end(self, summary: dict[str, float], status: str = "FINISHED") -> None:
        """End the parent run; summary metrics already logged with the same value (a resumed sweep) are not
        logged again."""
        logged = self.client.get_run(self.parent).data.metrics
        fresh = {k: v for k, v in summary.items() if logged.get(k) != float(v)}
        if fresh:
            self.log_metrics_parent(fresh)
        self.client.set_terminated(self.parent, status)

    def log_metrics_parent(self, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if math.isfinite(float(v))]
        if metrics:
            self.client.log_batch(self.parent, metrics=metrics)


class ResultTables:
    """``trials.parquet`` (one row per trial) and ``epochs.parquet`` (one row per trial per evaluation).

    While a sweep runs, each trial has its own part files under ``tables/`` (``epochs/<trial_id>.parquet``,
    rewritten at each of its evaluations, and ``trials/<trial_id>.parquet`` once it ends), so an evaluation
    writes one small file (one upload on object storage), and a killed driver loses nothing already reported.
    :meth:`consolidate` writes the two whole tables (end of a sweep; on resume). Read with :func:`read_tables`.
    """

    def __init__(self, sweep_dir: Location | Path | str, resume: bool) -> None:
        self.dir = locate(sweep_dir)
        self.trials: dict[str, dict[str, Any]] = {}
        self.epochs: dict[str, list[dict[str, Any]]] = {}
        if resume:
            try:
                trials, epochs = read_tables(self.dir)
            except FileNotFoundError:
                return
            for row in trials.to_dict("records"):
                self.trials[row["trial_id"]] = row
            for row in epochs.to_dict("records"):
                self.epochs.setdefault(row["trial_id"], []).append(row)

    def add_eval(self, trial_id: str, ident: dict[str, Any], values: dict[str, Any]) -> None:
        """Record one evaluation; an epoch reported again (after a restore) replaces the earlier row."""
        row = {"trial_id": trial_id, **{k: _cell(v) for k, v in ident.items()}, **values}
        rows = [r for r in self.epochs.get(trial_id, []) if r.get("epoch") != values.get("epoch")]
        rows.append(row)
        self.epochs[trial_id] = rows
        # every evaluation, this trial's part only: a crashed driver must not lose what trials already reported
        _write_parquet(pd.DataFrame(rows), self.dir / PARTS_DIR / "epochs" / f"{trial_id}.parquet")

    def finish(
        self, trial_id: str, ident: dict[str, Any], status: str, error: str | None, wall_time_s: float | None
    ) -> dict:
        """Summarise a trial from its evaluations into its ``trials.parquet`` row (written as its part file).

        ``wall_time_s`` None means the trial reported nothing in this session (e.g. ``--resume`` restored it
        from its final checkpoint, so it had nothing left to train): the wall time recorded earlier is kept.
        """
        if wall_time_s is None:
            wall_time_s = float(self.trials.get(trial_id, {}).get("wall_time_s") or 0.0)
        rows = sorted(self.epochs.get(trial_id, []), key=lambda r: r.get("epoch", 0))
        summary: dict[str, Any] = {
            "trial_id": trial_id,
            **{k: _cell(v) for k, v in ident.items()},
            "status": status,
            "error": error,
            "epochs_run": int(rows[-1]["epoch"]) if rows else 0,
            "evaluations": len(rows),
            "wall_time_s": float(wall_time_s),
        }
        skip = set(ident) | {"trial_id", "epoch", "step"}
        names = [k for k in (rows[-1] if rows else {}) if k not in skip]
        for name in names:
            series = pd.Series([r.get(name) for r in rows], dtype="float64")
            summary[f"final.{name}"] = float(series.iloc[-1])
            valid = series.dropna()
            if valid.empty or name in DIAGNOSTICS:
                continue
            pick = valid.idxmax() if metric_mode(name) == "max" else valid.idxmin()
            prefix = "best_label_selected" if is_label_metric(name) else "best"
            summary[f"{prefix}.{name}"] = float(series[pick])
            if name in ("acc",):
                summary["best_label_selected.epoch"] = int(rows[pick]["epoch"])
        self.trials[trial_id] = summary
        _write_parquet(pd.DataFrame([summary]), self.dir / PARTS_DIR / "trials" / f"{trial_id}.parquet")
        return summary

    def consolidate(self) -> None:
        """Write the whole ``trials.parquet`` and ``epochs.parquet`` from what this driver holds."""
        if self.trials:
            _write_parquet(pd.DataFrame(list(self.trials.values())), self.dir / TRIALS_FILE)
        rows = [r for rs in self.epochs.values() for r in rs]
        if rows:
            _write_parquet(pd.DataFrame(rows), self.dir / EPOCHS_FILE)

    flush = consolidate


def _read_parquet(loc: Location) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(loc.read_bytes()))


def _merge(whole: Location, parts: Location) -> pd.DataFrame | None:
    """The consolidated table with every trial that has part files replaced by its parts (None: neither)."""
    frames = [_read_parquet(p) for p in parts.files(".parquet")]
    if whole.is_file():
        base = _read_parquet(whole)
        if frames:
            fresh = set().union(*(set(f["trial_id"]) for f in frames))
            base = base[~base["trial_id"].isin(fresh)]
        frames.insert(0, base)
    frames = [f for f in frames if not f.empty]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)


def read_tables(sweep_dir: Location | Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, epochs)`` of a sweep folder or URI: the consolidated tables, with the per-trial part files
    (newer, and all a crashed driver left) taking precedence. ``epochs`` may be empty.

    Raises:
        FileNotFoundError: no trial has finished there yet (no ``trials.parquet`` and no trial part).
    """
    d = locate(sweep_dir)
    trials = _merge(d / TRIALS_FILE, d / PARTS_DIR / "trials")
    if trials is None:
        raise FileNotFoundError(f"{d}: no {TRIALS_FILE} (and no finished trial under {PARTS_DIR}/)")
    epochs = _merge(d / EPOCHS_FILE, d / PARTS_DIR / "epochs")
    return trials, epochs if epochs is not None else pd.DataFrame()


def has_tables(sweep_dir: Location | Path | str) -> bool:
    """True when :func:`read_tables` has something to read there."""
    d = locate(sweep_dir)
    return (d / TRIALS_FILE).is_file() or bool((d / PARTS_DIR / "trials").files(".parquet"))
