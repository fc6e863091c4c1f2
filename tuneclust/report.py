"""Results tables -> rankings, metric-vs-parameter plots (mean ± std over seeds) and ablation tables.

Reads only the Parquet tables a sweep writes (``trials.parquet``, ``epochs.parquet``) and the stored
``spec.yaml``; the ``analysis/`` scripts build each paper's figure or table from these functions, and share
their loading (:func:`load_finished`: finished trials of several sweeps with a ``dataset`` column), per-group
tables (:func:`metrics_table`), figure helpers and command line (:func:`analysis_cli`) from here.
Columns ``best_label_selected.*`` were selected over evaluations using the labels; they are marked so here.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tuneclust.metrics import metric_mode
from tuneclust.storage import Location, locate
from tuneclust.tracking import read_tables

CONFIG = "config."


def load_results(sweep_dir: str | Path | Location) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) of a sweep folder or URI (:func:`tuneclust.tracking.read_tables`: the whole tables, or
    the per-trial parts a crashed driver left); ``epochs`` is empty if no evaluation was recorded."""
    return read_tables(sweep_dir)


def load_spec_dict(sweep_dir: str | Path | Location) -> dict[str, Any]:
    path = locate(sweep_dir) / "spec.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def _dataset_label(name: str, root: str | None) -> str:
    """An ``imagefolder`` dataset is named by its folder, an ``npz`` file by its stem; others keep their name."""
    if root and name == "imagefolder":
        return Path(root).name
    if root and name == "npz":
        return Path(root).stem
    return name


def dataset_name(sweep_dir: str | Path) -> str:
    """The dataset of a sweep, from its stored spec's ``data.name`` (the folder's name if the spec has none).

    ``imagefolder`` is named by its ``data.root`` folder (e.g. ``imagenet10``) and ``npz`` by the file's stem
    (e.g. ``cifar10_r50``), so that tables name what was clustered.
    """
    data = load_spec_dict(sweep_dir).get("data") or {}
    return _dataset_label(data.get("name") or locate(sweep_dir).name, data.get("root"))


def load_trials(sweep_dirs: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Every trial (any status) of one or more sweep folders, pooled, with a ``dataset`` column.

    ``dataset`` is the trial's ``data.name`` (several datasets can be one sweep's search dimension), else
    :func:`dataset_name` of its folder; ``imagefolder``/``npz`` are named by ``data.root`` as there.
    """
    dirs = [sweep_dirs] if isinstance(sweep_dirs, str | Path) else list(sweep_dirs)
    frames = []
    for d in dirs:
        trials, _ = load_results(d)
        data = load_spec_dict(d).get("data") or {}
        default, root = data.get("name") or Path(d).name, data.get("root")
        names = trials["data.name"].fillna(default) if "data.name" in trials else default
        names = pd.Series(names, index=trials.index, dtype=object)
        trials["dataset"] = [_dataset_label(n, root) for n in names]
        frames.append(trials)
    return pd.concat(frames, ignore_index=True)


def load_finished(
    sweep_dirs: str | Path | Iterable[str | Path], metric: str | None = "final.acc"
) -> pd.DataFrame:
    """The finished trials of one or more sweep folders, pooled, with a ``dataset`` column (see
    :func:`load_trials`).

    Finished: ``status`` is ``TERMINATED`` (errored trials are dropped even if they were evaluated) and, unless
    ``metric`` is None, ``metric`` (a trials-table column, default ``final.acc``) is not NaN. A table without that
    column gives no rows. The index is 0..n-1.
    """
    df = load_trials(sweep_dirs)
    done = df[df["status"] == "TERMINATED"] if "status" in df else df
    if metric is not None:
        done = done[done[metric].notna()] if metric in done else done.iloc[0:0]
    return done.reset_index(drop=True)


def finished_or_exit(sweep_dirs: list[Path], need: Sequence[str] = ()) -> pd.DataFrame:
    """:func:`load_finished` (by ``final.acc``) for an analysis script: ends the program with a message when no
    trial finished, or when a column in ``need`` (e.g. the studied parameter) is missing."""
    done = load_finished(sweep_dirs)
    if done.empty or any(c not in done for c in need):
        what = " and ".join(["final.acc", *need])
        raise SystemExit(f"{' '.join(map(str, sweep_dirs))}: no finished trial with {what}")
    return done


def objective(sweep_dir: str | Path) -> tuple[str, str]:
    """(metric, mode) of the sweep's objective, from its stored spec (default acc, max)."""
    obj = load_spec_dict(sweep_dir).get("objective", {}) or {}
    metric = obj.get("metric") or "acc"
    return metric, obj.get("mode") or metric_mode(metric)


def searched_params(sweep_dir: str | Path, trials: pd.DataFrame) -> list[str]:
    """Columns of the searched keys (``config.<k>`` or ``data.<f>``) that vary across the trials."""
    keys = list((load_spec_dict(sweep_dir).get("search") or {}).keys())
    cols = [k if k.startswith("data.") else f"{CONFIG}{k}" for k in keys]
    return [c for c in cols if c in trials and trials[c].nunique(dropna=False) > 1]


def summarize(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean, std, median and count of ``metric`` per group (e.g. over seeds)."""
    g = df.groupby(by, dropna=False)[metric]
    out = g.agg(["mean", "std", "median", "count"]).reset_index()
    return out


def metrics_table(df: pd.DataFrame, by: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by``: ``<m>_mean``, ``<m>_std``, ``<m>_median`` of each metric, sorted by ``by``.

    ``<m>`` is the column's name without ``final.`` (``final.acc`` -> ``acc_mean``, ...). Metrics missing from
    ``df`` are skipped; there must be at least one. ``count`` (after the first metric's columns) is the number
    of non-NaN values of the first metric in the group. Columns: ``*by``, then per metric mean/std/median.
    """
    parts = []
    for metric in metrics:
        if metric in df:
            s = summarize(df, by, metric).set_index(by)
            name = metric.removeprefix("final.")
            parts.append(s.rename(columns={c: f"{name}_{c}" for c in s.columns if c != "count"}))
    if not parts:
        raise ValueError(f"none of {list(metrics)} is a column of the table")
    out = pd.concat(parts, axis=1)
    return out.loc[:, ~out.columns.duplicated()].reset_index().sort_values(by)


def sort_in_order(df: pd.DataFrame, col: str, order: Sequence[Any]) -> pd.DataFrame:
    """Rows sorted by where their ``col`` value stands in ``order``; values not in it follow, as found."""
    rank = {v: i for i, v in enumerate(order)}
    out = df.sort_values(col, key=lambda s: s.map(lambda v: rank.get(v, len(rank))), kind="stable")
    return out.reset_index(drop=True)


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Tight layout, write ``path`` (PNG, 120 dpi; its folder is created), close the figure; returns ``path``."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def errorbar_vs_param(ax: Any, df: pd.DataFrame, param: str, metric: str, label: str | None = None) -> None:
    """Draw on ``ax`` the mean ± std of ``metric`` per value of ``param`` (sorted; a non-numeric ``param`` is
    placed at 0, 1, ... with its values as tick labels)."""
    s = summarize(df, [param], metric).sort_values(param)
    x = s[param]
    numeric = pd.api.types.is_numeric_dtype(x)
    xs = x if numeric else np.arange(len(x))
    ax.errorbar(xs, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=label)
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in x], rotation=30)


def plot_metric_vs_param(
    df: pd.DataFrame, param: str, metric: str, path: str | Path, hue: str | None = None, logx: bool = False
) -> Path:
    """Line plot of ``metric`` (mean ± std over the other dimensions, e.g. seeds) against ``param``."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    groups = [(None, df)] if hue is None else list(df.groupby(hue, dropna=False))
    for name, sub in groups:
        errorbar_vs_param(ax, sub, param, metric, label=None if hue is None else str(name))
    if logx and pd.api.types.is_numeric_dtype(df[param]) and (df[param] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(param.removeprefix(CONFIG))
    ax.set_ylabel(metric)
    if hue is not None:
        ax.legend(title=hue.removeprefix(CONFIG), fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_metrics_panels(
    df: pd.DataFrame,
    param: str,
    metrics: Sequence[str],
    path: str | Path,
    *,
    panel: str = "dataset",
    title: str = "{}",
    xlabel: str | None = None,
    ylabel: str = "score (last evaluation)",
    ylim: tuple[float, float] | None = (0, 1),
    marks: dict[Any, float] | None = None,
    mark_label: str = "paper's choice",
) -> Path:
    """One panel per value of ``panel`` (sorted): mean ± std of each metric against ``param``, one line each.

    Lines are labelled by the metric's upper-cased name without ``final.``; ``title`` is formatted with the
    panel's value; ``marks`` maps a panel's value to an x drawn as a dotted vertical line (``mark_label``).
    """
    names = sorted(df[panel].unique())
    fig, axes = pyplot().subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        sub = df[df[panel] == name]
        for metric in metrics:
            if metric in sub:
                errorbar_vs_param(ax, sub, param, metric, label=metric.removeprefix("final.").upper())
        if marks and name in marks:
            ax.axvline(marks[name], color="grey", ls=":", label=mark_label)
        ax.set(title=title.format(name), xlabel=xlabel or param.removeprefix(CONFIG), ylabel=ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def ablation_table(
    df: pd.DataFrame, metric: str | list[str], arm_order: list[str] | None = None
) -> pd.DataFrame:
    """Per arm: mean ± std (over seeds and other dimensions) of each metric, in ``arm_order``."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    rows = []
    for arm, sub in df.groupby("arm", dropna=False, sort=False):
        row: dict[str, Any] = {"arm": arm, "trials": len(sub)}
        for m in metrics:
            if m in sub:
                v = sub[m].astype(float)
                row[m] = f"{v.mean():.4f} ± {v.std():.4f}" if len(v.dropna()) > 1 else f"{v.mean():.4f}"
        rows.append(row)
    out = pd.DataFrame(rows)
    return sort_in_order(out, "arm", arm_order) if arm_order else out.reset_index(drop=True)


def write_table(df: pd.DataFrame, path_stem: str | Path) -> list[Path]:
    """Write ``df`` as Markdown, CSV and LaTeX next to each other."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".tex")]
    paths[0].write_text(df.to_markdown(index=False) if _has_tabulate() else df.to_string(index=False))
    df.to_csv(paths[1], index=False)
    paths[2].write_text(_latex(df))
    return paths


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _latex(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    esc = lambda v: str(v).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
    lines = [
        r"\begin{tabular}{" + "l" * len(cols) + "}",
        r"\hline",
        " & ".join(esc(c) for c in cols) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(lines)


def metric_column(metric: str) -> str:
    """The trials-table column holding a metric's value at the last evaluation."""
    return f"final.{metric}"


def ranking(sweep_dir: str | Path, metric: str | None = None) -> pd.DataFrame:
    """Trials ranked by the objective's value at their last evaluation (errored trials last)."""
    trials, _ = load_results(sweep_dir)
    obj, mode = objective(sweep_dir)
    metric = metric or obj
    mode = mode if metric == obj else metric_mode(metric)
    col = metric_column(metric)
    params = searched_params(sweep_dir, trials)
    keep = ["trial_id", "arm", *params, "status", "epochs_run", col]
    for extra in ("final.acc", "final.nmi", "final.ari", "final.silhouette"):
        if extra in trials and extra not in keep:
            keep.append(extra)
    if f"best_label_selected.{metric}" in trials:
        keep.append(f"best_label_selected.{metric}")
    keep = [c for c in keep if c in trials and not (c == "arm" and (trials[c].fillna("") == "").all())]
    out = trials[keep]
    if col in out:
        out = out.sort_values(col, ascending=mode == "min", na_position="last")
    out = out.rename(columns={c: c.removeprefix(CONFIG) for c in out.columns})
    return out.reset_index(drop=True)


def ranking_text(sweep_dir: str | Path, metric: str | None = None, top: int = 20) -> str:
    df = ranking(sweep_dir, metric).head(top)
    note = ""
    if any(c.startswith("best_label_selected.") for c in df.columns):
        note = "\n(best_label_selected.*: best over evaluations chosen WITH the labels — an oracle, not a result)"
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        return df.to_string(index=False) + note


def write_report(
    sweep_dir: str | Path, metric: str | None = None, out: str | Path | None = None
) -> list[Path]:
    """Ranking table, one metric-vs-parameter plot per searched parameter, and an ablation table if arms."""
    here = locate(sweep_dir)
    if out is None:  # next to the tables; a sweep on object storage reports into ./<name>-report
        out = Path(here.path) / "report" if here.local else Path(f"{here.name}-report")
    out = Path(out)
    trials, _ = load_results(sweep_dir)
    metric = metric or objective(sweep_dir)[0]
    col = metric_column(metric)
    written = write_table(ranking(sweep_dir, metric), out / "ranking")
    done = trials[trials["status"] == "TERMINATED"] if "status" in trials else trials
    if col not in done or done.empty:
        return written
    params = [p for p in searched_params(sweep_dir, trials) if p != f"{CONFIG}seed"]
    hue = "arm" if done["arm"].nunique() > 1 else None
    for p in params:
        logx = (
            pd.api.types.is_numeric_dtype(done[p])
            and done[p].min() > 0
            and done[p].max() / done[p].min() >= 100
        )
        written.append(
            plot_metric_vs_param(done, p, col, out / f"{metric}_vs_{p.removeprefix(CONFIG)}.png", hue, logx)
        )
    if done["arm"].nunique() > 1:
        cols = [c for c in ("final.acc", "final.nmi", "final.ari", col) if c in done]
        written += write_table(ablation_table(done, list(dict.fromkeys(cols))), out / "ablation")
    return written


def sibling_script(script: str | Path, name: str) -> ModuleType:
    """``analysis/<name>.py`` beside ``script`` (pass ``__file__``) as a module, however the caller was run
    (``python analysis/x.py`` or loaded by path from a test): analysis/ is not a package."""
    path = Path(script).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_analysis_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def analysis_cli(
    description: str,
    build: Callable[[list[Path], Path], list[Path]],
    argv: list[str] | None = None,
    multi: bool = True,
) -> int:
    """The command line of an ``analysis/`` script: ``SWEEP_DIR [SWEEP_DIR ...] [--out DIR]``.

    ``description``: the script's docstring (its first line is the ``--help`` text). ``multi``: accept one or
    more sweep folders, else exactly one. ``--out`` defaults to ``<first SWEEP_DIR>/analysis`` and is created;
    ``build(sweep_dirs, out)`` writes the figures and tables and returns their paths, printed one a line.
    Returns the exit code (0); ``build`` ends the program with a message (``SystemExit``) when there is
    nothing to analyse.
    """
    p = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    p.add_argument("sweep_dir", type=Path, nargs="+" if multi else None)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <first sweep_dir>/analysis)"
    )
    args = p.parse_args(argv)
    dirs = args.sweep_dir if multi else [args.sweep_dir]
    out = args.out or dirs[0] / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    for path in build(dirs, out):
        print(path)
    return 0
