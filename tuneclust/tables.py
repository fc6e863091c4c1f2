"""The two Parquet tables of a sweep: ``trials.parquet`` (one row per trial) and ``epochs.parquet`` (one row per
trial per evaluation). Each evaluation rewrites only its trial's part file (atomically), so a crash keeps every
finished trial and what running trials had reported; the whole tables are written at the end of a sweep.
:func:`read_tables` is the one reader (whole tables + parts).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from tuneclust.metrics import metric_mode
from tuneclust.storage import Location, locate

TRIALS_FILE = "trials.parquet"


EPOCHS_FILE = "epochs.parquet"


PARTS_DIR = "tables"
"""Per-trial part files, ``tables/epochs/<trial_id>.parquet`` and ``tables/trials/<trial_id>.parquet``."""


LABELLED_SUFFIXES = ("acc", "nmi", "ari")
"""Metrics computed with the ground-truth labels: their best-over-evaluations is label-selected."""


COMPILE_COUNTS = {"compile_graph_breaks", "compile_cudagraph_skips"}
"""What a compiled trial reports of its compilation (tuneclust.runtime.CompileWatch): diagnostics, not scores."""


DIAGNOSTICS = {"lr", "images_per_s", "eval_time_s", "time_total_s", "clusters_used", "phase", "finetune_iter"}


DIAGNOSTICS |= {"eval_embed_s", "eval_kmeans_s", *COMPILE_COUNTS}
"""Reported values that are not scores: only their final value goes into trials.parquet."""


def is_label_metric(name: str) -> bool:
    return name in LABELLED_SUFFIXES or name.endswith(tuple(f"_{s}" for s in LABELLED_SUFFIXES))


def cell(v: Any) -> Any:
    """A value Parquet can hold in a column of scalars."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v, default=str)


def _write_parquet(df: pd.DataFrame, loc: Location) -> None:
    """Write a table as one whole file (atomic: a crash leaves the old file or the new one)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    loc.write_bytes(buf.getvalue())


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
        row = {"trial_id": trial_id, **{k: cell(v) for k, v in ident.items()}, **values}
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
            **{k: cell(v) for k, v in ident.items()},
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
