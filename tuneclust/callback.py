"""The sweep driver's Tune callback: trial events -> MLflow (:mod:`tuneclust.tracking`) and the Parquet tables
(:mod:`tuneclust.tables`); at the end of the experiment, the answer and the report. Also the sweep's outcome
(trials finished, errored, unfinished) read back from the tables.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from tuneclust import answer, progress, raycompat, render, report, tables, tracking
from tuneclust.schedulers import pbt_keys
from tuneclust.spec import Spec
from tuneclust.storage import Location, locate

RAY_KEYS = {
    "time_this_iter_s", "timestamp", "pid", "hostname", "node_ip", "config", "trial_id", "date", "done",
    "training_iteration", "iterations_since_restore", "time_since_restore", "checkpoint_dir_name",
    "should_checkpoint", "experiment_tag",
}  # fmt: skip


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
        resume = tables.has_tables(self.sweep_dir) or (self.sweep_dir / tracking.MLFLOW_STATE).exists()
        self._live = {
            "tables": tables.ResultTables(self.sweep_dir, resume),
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
    def tables(self) -> tables.ResultTables:
        return self._live["tables"]

    def _ident(self, trial: Any, point: dict[str, Any] | None = None) -> dict[str, Any]:
        """The trial's table columns at ``point`` (default: its current point, Ray's ``trial.config``, which PBT
        changes)."""
        point = dict(trial.config if point is None else point)
        key = (trial.trial_id, repr(sorted(point.items(), key=lambda kv: kv[0])))
        idents = self._live["idents"]
        if key not in idents:
            idents[key] = self.plan.identity(point)
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
        ident = self._ident(trial, result.get("config"))  # the point in force at this evaluation (PBT)
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
        ident = dict(self._ident(trial))  # the final point
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
            if tables.has_tables(self.sweep_dir):
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
    rows = tables.ResultTables(out, resume=True).trials if tables.has_tables(out) else {}
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
