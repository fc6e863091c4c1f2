"""Results tables -> rankings, metric-vs-parameter plots (mean ± std over seeds) and ablation tables.

Reads only the Parquet tables a sweep writes (``trials.parquet``, ``epochs.parquet``) and the stored
``spec.yaml``. The ``analysis/`` scripts are short declarations over this module: each names its columns and
its paper's numbers (one :class:`Paper` per study) and calls the shared loading (:func:`load_trials`,
:func:`load_finished`, :func:`load_epochs`: several sweeps pooled with a ``dataset`` column; :func:`arm_order`
from the stored spec), renderers (:func:`plot_metric_vs_param`, :func:`plot_metrics_panels`, :func:`bar_chart`,
:func:`window_study`, :func:`sensitivity_study`, :func:`write_wide_tables`) and command line
(:func:`analysis_cli`). Every figure is written as PNG and SVG, names its statistic (mean ± std over N seeds)
and uses readable axis names (:func:`readable`); tables are Markdown, CSV and LaTeX. Columns
``best_label_selected.*`` were selected over evaluations using the labels; they are marked so here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tuneclust.metrics import metric_mode
from tuneclust.storage import Location, locate
from tuneclust.tracking import read_tables

CONFIG = "config."
METRIC_NAMES = {"acc": "ACC", "nmi": "NMI", "ari": "ARI", "silhouette": "silhouette", "loss": "loss"}
PREFIX_NAMES = {
    "final.": "{} (last evaluation)",
    "best_label_selected.": "{} (best evaluation, chosen with labels)",
    "best.": "{} (best evaluation)",
}


def readable(column: str) -> str:
    """An axis or column name for a reader: ``final.acc`` -> ``ACC (last evaluation)``, ``config.tau`` ->
    ``tau``, ``data.r_min`` -> ``r_min``; anything else unchanged."""
    for prefix, form in PREFIX_NAMES.items():
        if column.startswith(prefix):
            name = column.removeprefix(prefix)
            return form.format(METRIC_NAMES.get(name, name))
    if column.startswith((CONFIG, "data.")):
        return column.split(".", 1)[1]
    return METRIC_NAMES.get(column, column)


def statistic(df: pd.DataFrame, by: Sequence[str]) -> str:
    """What an error bar over the rows of each group of ``by`` shows: ``mean ± std over 3 seeds`` (or ``over
    2-3 trials`` when groups differ in size, ``trials`` when the rows are not all different seeds)."""
    sizes = df.groupby(list(by), dropna=False).size() if by else pd.Series([len(df)])
    lo, hi = (int(sizes.min()), int(sizes.max())) if len(sizes) else (0, 0)
    seeds = (
        f"{CONFIG}seed" in df
        and (df.groupby(list(by), dropna=False)[f"{CONFIG}seed"].nunique() == sizes).all()
    )
    unit = ("seed" if seeds else "trial") + ("s" if hi != 1 else "")
    text = f"mean ± std over {lo} {unit}" if lo == hi else f"mean ± std over {lo}-{hi} {unit}"
    at = df.attrs.get("budget_epoch")
    return f"{text}, at epoch {at} (equal budget)" if at is not None else text


def markdown_table(df: pd.DataFrame, digits: int = 4) -> str:
    """``df`` as a GitHub Markdown table (no dependency): floats with ``digits`` significant digits, NaN empty,
    ``|`` escaped."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        text = f"{v:.{digits}g}" if isinstance(v, float | np.floating) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


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
        trials, epochs = load_results(d)
        trials = at_equal_budget(trials, epochs)
        data = load_spec_dict(d).get("data") or {}
        default, root = data.get("name") or Path(d).name, data.get("root")
        names = trials["data.name"].fillna(default) if "data.name" in trials else default
        names = pd.Series(names, index=trials.index, dtype=object)
        trials["dataset"] = [_dataset_label(n, root) for n in names]
        frames.append(trials)
    out = pd.concat(frames, ignore_index=True)
    budgets = {f.attrs.get("budget_epoch") for f in frames} - {None}
    if budgets:
        out.attrs["budget_epoch"] = min(budgets)
    return out


def at_equal_budget(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Under early stopping (finished trials ran different numbers of epochs), every finished trial's ``final.*``
    values are replaced by its values at the last evaluation all of them reached, so that no comparison mixes
    budgets; ``budget_epoch`` and ``stopped`` say so (also ``attrs["budget_epoch"]``, which :func:`statistic`
    names in every figure). A sweep without early stopping is returned unchanged."""
    from tuneclust.answer import equal_budget_epoch, rows_at

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
    """Tight layout, write ``path`` (PNG, 150 dpi; its folder is created) and the same figure as vector SVG beside
    it (``.svg``, for a paper), close the figure; returns ``path``."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    fig.savefig(path.with_suffix(".svg"))
    pyplot().close(fig)
    return path


def mark_value(ax: Any, x: Any = None, y: Any = None, label: str = "paper", xs: Sequence[Any] = ()) -> None:
    """Mark the paper's value on ``ax``: a dotted vertical line at ``x`` (a chosen setting; a non-numeric ``x``
    is placed at its index in ``xs``) and/or a dashed horizontal line at ``y`` (a reported score)."""
    if x is not None:
        pos = list(xs).index(x) if xs and not isinstance(x, int | float) and x in list(xs) else x
        ax.axvline(pos, color="grey", ls=":", lw=1.2, label=label)
    if y is not None:
        ax.axhline(y, color="k", ls="--", lw=1, label=label if x is None else f"{label} (score)")


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
    df: pd.DataFrame,
    param: str,
    metric: str,
    path: str | Path,
    hue: str | None = None,
    logx: bool = False,
    *,
    mark_x: Any = None,
    mark_y: float | None = None,
    mark_label: str = "paper",
    title: str | None = None,
    stat: str | None = None,
) -> Path:
    """Line plot of ``metric`` (mean ± std over the other dimensions, e.g. seeds) against ``param``; the legend
    names the statistic (``stat``, default :func:`statistic` of the rows); ``mark_x``/``mark_y`` mark the
    paper's chosen setting / reported value."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    groups = [(None, df)] if hue is None else list(df.groupby(hue, dropna=False))
    for name, sub in groups:
        errorbar_vs_param(ax, sub, param, metric, label=metric_label(metric) if hue is None else str(name))
    if logx and pd.api.types.is_numeric_dtype(df[param]) and (df[param] > 0).all():
        ax.set_xscale("log")
    mark_value(ax, mark_x, mark_y, mark_label)
    ax.set_xlabel(readable(param))
    ax.set_ylabel(readable(metric))
    if title:
        ax.set_title(title, fontsize=10)
    by = [param] if hue is None else [hue, param]
    stat = stat or statistic(df, by)
    legend_title = stat if hue is None else f"{readable(hue)}; {stat}"
    ax.legend(title=legend_title, fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def metric_label(column: str) -> str:
    """A metric's short name for a legend: ``final.acc`` -> ``ACC``."""
    name = column.split(".")[-1]
    return METRIC_NAMES.get(name, name)


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
        ax.set(title=title.format(name), xlabel=xlabel or readable(param), ylabel=ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(title=statistic(sub, [param]), fontsize=8, title_fontsize=8)
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
    paths[0].write_text(markdown_table(df))
    df.to_csv(paths[1], index=False)
    paths[2].write_text(_latex(df))
    return paths


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
    """Trials ranked by the objective at the equal budget (the last evaluation every finished trial reached;
    ``<metric>@<epoch>``), then errored trials; ``stopped`` marks a trial an early-stopping scheduler ended
    before the full budget. The settings' ranking (seeds pooled) is :func:`tuneclust.answer.answer`'s."""
    from tuneclust.answer import equal_budget_epoch, rows_at

    trials, epochs = load_results(sweep_dir)
    obj, mode = objective(sweep_dir)
    metric = metric or obj
    mode = mode if metric == obj else metric_mode(metric)
    col = metric_column(metric)
    params = searched_params(sweep_dir, trials)
    full = int((load_spec_dict(sweep_dir).get("budget") or {}).get("epochs") or 0)
    trials = trials.copy()
    if full and "epochs_run" in trials:
        trials["stopped"] = (trials["epochs_run"] < full) & (trials.get("status") == "TERMINATED")
    at = equal_budget_epoch(trials)
    at_col = f"{metric}@{at}" if at is not None else None
    if at is not None and not epochs.empty and metric in epochs:
        trials[at_col] = trials["trial_id"].map(rows_at(epochs, at)[metric])
    keep = ["trial_id", "arm", *params, "status", "epochs_run", "stopped", at_col, col]
    for extra in ("final.acc", "final.nmi", "final.ari", "final.silhouette"):
        if extra in trials and extra not in keep:
            keep.append(extra)
    if f"best_label_selected.{metric}" in trials:
        keep.append(f"best_label_selected.{metric}")
    keep = [c for c in keep if c and c in trials and not (c == "arm" and (trials[c].fillna("") == "").all())]
    if "stopped" in keep and not trials["stopped"].any():
        keep.remove("stopped")
    out = trials[keep]
    key = at_col if at_col in out else col
    if key in out:
        out = out.sort_values(key, ascending=mode == "min", na_position="last")
    out = out.rename(columns={c: c.removeprefix(CONFIG) for c in out.columns})
    return out.reset_index(drop=True)


def ranking_text(sweep_dir: str | Path, metric: str | None = None, top: int = 20) -> str:
    """The sweep's answer (:func:`tuneclust.answer.answer_text`: settings at equal budget, best vs runner-up,
    importance, trust table), then the trials' ranking."""
    from tuneclust.answer import answer_text

    ans = sweep_answer(sweep_dir, metric)
    df = ranking(sweep_dir, metric).head(top)
    note = ""
    if any(c.startswith("best_label_selected.") for c in df.columns):
        note = "\n(best_label_selected.*: best over evaluations chosen WITH the labels — an oracle, not a result)"
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        trials = "trials:\n" + df.to_string(index=False) + note
    return f"{answer_text(ans, top)}\n{trials}" if ans is not None else trials


def sweep_answer(sweep_dir: str | Path | Location, metric: str | None = None):
    """:func:`tuneclust.answer.answer` of a sweep folder or URI (None when no trial finished)."""
    from tuneclust.answer import answer

    trials, epochs = load_results(sweep_dir)
    return answer(trials, epochs, load_spec_dict(sweep_dir), sweep_dir, metric)


def answer_markdown(ans: Any, top: int = 20) -> str:
    """The answer for the MLflow parent's description: the settings, the verdict, importance, trust."""
    from tuneclust.answer import gap_text, readable_param, settings_display

    parts = [
        f"Settings ranked by `{ans.metric}` at **{ans.view.label}**:",
        markdown_table(settings_display(ans.settings).head(top), 3),
        gap_text(ans.gap, ans.metric),
    ]
    if ans.full_settings is not None and not ans.full_settings.empty:
        parts += [
            f"Survivors at **{ans.views[1].label}**:",
            markdown_table(settings_display(ans.full_settings).head(top), 3),
        ]
    if ans.importance:
        parts.append(
            "Parameter importance (fANOVA; the seed's share is noise): "
            + ", ".join(f"{readable_param(k)} {v:.2f}" for k, v in ans.importance.items())
        )
    if ans.trust is not None:
        parts += [
            "Can label-free selection be trusted here (Spearman with ACC across settings)?",
            markdown_table(ans.trust, 3),
        ]
    return "\n\n".join(parts)


def write_report(
    sweep_dir: str | Path, metric: str | None = None, out: str | Path | None = None, ans: Any = None
) -> list[Path]:
    """The answer (``answer.md``; settings ranked at equal budget with seed intervals, the survivors at the full
    budget, ``trust`` and ``importance`` tables), the trials' ranking, one metric-vs-parameter plot per searched
    parameter at the stated epoch, an ablation table if arms, and the chosen trial's confusion matrix and
    cluster sizes from its stored partition. ``ans``: the sweep's answer if the caller has it already."""
    from tuneclust.answer import answer_text, log_scaled, settings_display

    here = locate(sweep_dir)
    if out is None:  # next to the tables; a sweep on object storage reports into ./<name>-report
        out = Path(here.path) / "report" if here.local else Path(f"{here.name}-report")
    out = Path(out)
    metric = metric or objective(sweep_dir)[0]
    written = write_table(ranking(sweep_dir, metric), out / "ranking")
    ans = ans if ans is not None else sweep_answer(sweep_dir, metric)
    if ans is None:
        return written
    out.mkdir(parents=True, exist_ok=True)
    (out / "answer.md").write_text(f"```\n{answer_text(ans)}\n```\n")
    written.append(out / "answer.md")
    written += write_table(settings_display(ans.settings), out / "settings")
    if ans.full_settings is not None:
        written += write_table(settings_display(ans.full_settings), out / "settings_full_budget")
    if ans.trust is not None:
        written += write_table(ans.trust, out / "trust")
    if ans.importance:
        imp = pd.DataFrame({"parameter": list(ans.importance), "importance": list(ans.importance.values())})
        written += write_table(imp, out / "importance")
    spec = load_spec_dict(sweep_dir)
    params = [p for p in searched_params(sweep_dir, load_results(sweep_dir)[0]) if p != f"{CONFIG}seed"]
    for view in ans.views:
        done = view.trials
        if metric not in done or done.empty:
            continue
        hue = "arm" if done["arm"].nunique() > 1 else None
        suffix = "" if view is ans.views[0] else "_full_budget"
        for p in params:
            png = plot_metric_vs_param(
                done,
                p,
                metric,
                out / f"{metric}_vs_{readable(p)}{suffix}.png",
                hue,
                p in log_scaled(spec, done),
                title=f"at {view.label}",
            )
            written += [png, png.with_suffix(".svg")]
    done = ans.view.trials
    if done["arm"].nunique() > 1:
        cols = [c for c in ("acc", "nmi", "ari", metric) if c in done]
        written += write_table(ablation_table(done, list(dict.fromkeys(cols))), out / "ablation")
    written += chosen_trial_figures(ans, here, out)
    return written


def chosen_trial_figures(ans: Any, sweep_dir: Location, out: Path) -> list[Path]:
    """The chosen trial (the best seed of the best setting at the compared epoch): its cluster sizes and, with
    labels, its confusion matrix (clusters matched to classes), from its stored partition of the subset."""
    from tuneclust import partitions
    from tuneclust.metrics import cluster_accuracy

    view, best = ans.view, ans.settings["setting"][0] if not ans.settings.empty else None
    rows = view.trials[view.trials["setting"] == best]
    if rows.empty or ans.metric not in rows:
        return []
    row = rows.sort_values(ans.metric, ascending=ans.mode == "min").iloc[0]
    parts = partitions.read(sweep_dir, view.epoch, trials=[row["trial_id"]], embeddings=False)
    subset = partitions.read_subset(sweep_dir)
    if not parts or subset is None:
        return []
    assignment = parts[row["trial_id"]].assignment.astype(np.int64)
    labels = subset.get("labels")
    what = f"trial {row['trial_id']} ({best}, seed {row.get(CONFIG + 'seed', '?')}), epoch {view.epoch}"
    n_panels = 2 if labels is not None else 1
    fig, axes = pyplot().subplots(1, n_panels, figsize=(5 * n_panels, 4), squeeze=False)
    sizes = np.bincount(assignment)
    axes[0][0].bar(np.arange(len(sizes)), np.sort(sizes)[::-1], color="tab:blue")
    axes[0][0].set(xlabel="cluster (largest first)", ylabel="images", title="cluster sizes")
    if labels is not None:
        k = int(max(assignment.max(), labels.max()) + 1)
        m = np.zeros((k, k), dtype=np.int64)
        np.add.at(m, (assignment, labels), 1)
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(-m)
        order = r[np.argsort(c)]  # cluster matched to class 0, 1, ...
        ax = axes[0][1]
        ax.imshow(m[order], cmap="Blues")
        ax.set(
            xlabel="class",
            ylabel="cluster (matched to class)",
            title=f"ACC {cluster_accuracy(labels, assignment):.3f}",
        )
    fig.suptitle(f"{what}, {len(assignment)} images of the shared subset", fontsize=9)
    png = save_figure(fig, out / "chosen_trial.png")
    return [png, png.with_suffix(".svg")]


def trial_figures(rows: list[dict[str, Any]], metric: str, out: Path, name: str) -> list[Path]:
    """A trial's learning curves from its ``epochs.parquet`` rows (drawn in the driver from the tables, not from
    the trial): the objective and the label metrics against the epoch, and the loss on a second axis. Returns
    ``[out/<name>_curves.png]``, or nothing when the trial reported fewer than one evaluation."""
    df = pd.DataFrame(rows)
    if df.empty or "epoch" not in df:
        return []
    df = df.sort_values("epoch")
    scores = [m for m in dict.fromkeys([metric, "acc", "nmi", "ari"]) if m in df and m != "loss"]
    fig, ax = pyplot().subplots(figsize=(4.5, 3))
    for m in scores:
        ax.plot(df["epoch"], df[m], marker="o", ms=3, label=metric_label(m))
    ax.set(xlabel="epoch", ylabel="score")
    if "loss" in df:
        ax2 = ax.twinx()
        ax2.plot(df["epoch"], df["loss"], color="grey", ls="--", lw=1, label="loss (right axis)")
        ax2.set_ylabel("loss")
        ax2.legend(loc="lower right", fontsize=7)
    if scores:
        ax.legend(loc="upper left", fontsize=7, title="per evaluation", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / f"{name}_curves.png"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return [path]


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


# ------------------------------------------------------------------------------------------------------------
# The shared pieces of the analysis/ scripts: a paper's numbers in one form, the study's arm order from its
# stored spec, and the renderers several studies draw with (bars per group, window summaries, wide tables,
# sensitivity panels). A script declares its columns and its Paper and calls these.


@dataclass(frozen=True)
class Paper:
    """A paper's reference numbers for one study, in one form: scores as fractions (like the metrics), keyed
    ``row -> column -> value per metric``, and the settings the paper chose (``choice``).

    ``row`` is what the study varies in rows (an arm, a statistic, a method), ``column`` a dataset, network or
    parameter value; ``metrics`` names the values of each cell (e.g. ``("ACC", "NMI", "ARI")``).
    """

    source: str
    metrics: tuple[str, ...] = ()
    scores: dict[Any, dict[Any, tuple[float, ...]]] = field(default_factory=dict)
    choice: dict[Any, Any] = field(default_factory=dict)

    def score(self, row: Any, column: Any, metric: str) -> float | None:
        """The paper's value (a fraction) of ``metric`` (``ACC``, ``final.acc`` or ``acc``), else None."""
        name = metric_label(metric)
        cell = self.scores.get(row, {}).get(column)
        if cell is None or name not in self.metrics:
            return None
        return cell[self.metrics.index(name)]

    def table(self, row_name: str = "row") -> pd.DataFrame:
        """The paper's numbers as printed there (in %, one decimal): a row per row key, a column per
        (column, metric), and the source."""
        rows = []
        for row, cells in self.scores.items():
            rec: dict[str, Any] = {row_name: row}
            for col, values in cells.items():
                for m, v in zip(self.metrics, values):
                    rec[f"{col} {m}" if len(self.metrics) > 1 else str(col)] = round(100 * v, 2)
            rows.append(rec)
        out = pd.DataFrame(rows)
        out["source"] = self.source
        return out


def arm_order(sweep_dirs: str | Path | Iterable[str | Path]) -> list[str]:
    """The study's arms in the order its stored spec lists them (first folder that has an ablation)."""
    dirs = [sweep_dirs] if isinstance(sweep_dirs, str | Path) else list(sweep_dirs)
    for d in dirs:
        ablation = load_spec_dict(d).get("ablation") or {}
        if ablation:
            return list(ablation)
    return []


def load_epochs(sweep_dirs: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Every evaluation of one or more sweep folders, pooled, with the ``dataset`` column of its trial and the
    trial's ``status`` (see :func:`load_trials`)."""
    dirs = [sweep_dirs] if isinstance(sweep_dirs, str | Path) else list(sweep_dirs)
    trials = load_trials(dirs)
    frames = [load_results(d)[1] for d in dirs]
    epochs = (
        pd.concat([f for f in frames if not f.empty], ignore_index=True)
        if any(len(f) for f in frames)
        else None
    )
    if epochs is None:
        return pd.DataFrame(columns=["trial_id", "epoch", "dataset", "status"])
    keep = trials[["trial_id", "dataset", "status"]].drop_duplicates("trial_id")
    return epochs.drop(columns=[c for c in ("dataset", "status") if c in epochs]).merge(keep, on="trial_id")


def _paper_column(paper: Paper | None, row: Any, df: pd.DataFrame) -> Any:
    """The paper column that matches ``df``: its one ``dataset``, else the row's only column, else None."""
    columns = list(paper.scores.get(row, {})) if paper else []
    names = df["dataset"].unique() if "dataset" in df else []
    if len(names) == 1 and names[0] in columns:
        return names[0]
    return columns[0] if len(columns) == 1 else None


def bar_chart(
    df: pd.DataFrame,
    group: str,
    metric: str,
    path: str | Path,
    *,
    hue: str | None = None,
    order: Sequence[Any] = (),
    paper: Paper | None = None,
    title: str = "",
    percent: bool = False,
) -> Path:
    """Bars of ``metric`` (mean ± std per ``group``, one bar per ``hue`` value), groups in ``order`` (others
    after); the legend names the statistic; ``paper``'s values (row = group, column = hue value or the only
    column) are drawn as black ticks labelled "paper", and ``paper.choice[group]`` (the paper's own arm or
    setting) is shaded."""
    groups = sort_in_order(pd.DataFrame({group: df[group].unique()}), group, list(order))[group].tolist()
    hues = [None] if hue is None else sorted(df[hue].unique(), key=str)
    width = 0.8 / len(hues)
    scale = 100 if percent else 1
    fig, ax = pyplot().subplots(figsize=(1.1 * len(groups) * max(1, len(hues) / 2) + 2.5, 3.6))
    marked = False
    for j, h in enumerate(hues):
        sub = df if h is None else df[df[hue] == h]
        s = summarize(sub, [group], metric).set_index(group).reindex(groups)
        xs = [i + (j - (len(hues) - 1) / 2) * width for i in range(len(groups))]
        label = metric_label(metric) if h is None else str(h)
        ax.bar(
            xs, scale * s["mean"], width, yerr=scale * s["std"].fillna(0), capsize=3, label=label, alpha=0.85
        )
        for x, g in zip(xs, groups):
            col = h if h is not None else _paper_column(paper, g, sub)
            v = paper.score(g, col, metric) if paper and col is not None else None
            if v is not None:
                ax.plot(
                    [x - width / 2, x + width / 2],
                    [scale * v] * 2,
                    "k-",
                    lw=2,
                    label=None if marked else "paper",
                )
                marked = True
    chosen = paper.choice.get(group) if paper else None
    if chosen in groups:  # the paper's own setting among the groups: shaded
        i = groups.index(chosen)
        ax.axvspan(i - 0.45, i + 0.45, color="grey", alpha=0.15, label="paper's setting")
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30 if len(groups) > 4 else 0)
    ax.set_ylabel(readable(metric) + (" (%)" if percent else ""))
    if not percent:
        ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    by = [group] if hue is None else [group, hue]
    ax.legend(title=statistic(df, by), fontsize=8, title_fontsize=8)
    return save_figure(fig, path)


PAPER_EPOCHS, PAPER_WINDOW = 2000, 500
"""IDFD's Fig. 3 and 4 average over the last 500 of 2000 epochs (the last quarter of the run)."""


def last_window(epochs: pd.DataFrame) -> pd.DataFrame:
    """Each trial's evaluations in its final window: epochs > last - 500 for runs of >= 2000 epochs, else the
    last quarter of its evaluations (at least one). Under early stopping "last" is the last epoch every finished
    trial reached, so that no window mixes budgets."""
    if "status" in epochs and epochs["status"].eq("TERMINATED").any():
        done = epochs[epochs["status"] == "TERMINATED"]
        equal = done.groupby("trial_id")["epoch"].max().min()
        epochs = epochs[epochs["epoch"] <= equal]
    parts = []
    for _, g in epochs.groupby("trial_id", sort=False):
        g = g.sort_values("epoch")
        last = g["epoch"].max()
        if last >= PAPER_EPOCHS:
            parts.append(g[g["epoch"] > last - PAPER_WINDOW])
        else:
            parts.append(g.tail(max(1, -(-len(g) // 4))))
    return pd.concat(parts, ignore_index=True)


def window_table(win: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group: ACC mean/std/median over the pooled window evaluations, the std of the per-trial window
    means (seed spread), the number of trials and evaluations, and mean NMI/ARI."""
    table = summarize(win, by, "acc").rename(
        columns={"mean": "acc_mean", "std": "acc_std", "median": "acc_median", "count": "evaluations"}
    )
    per_trial = win.groupby([*by, "trial_id"], dropna=False)["acc"].mean().reset_index()
    seeds = per_trial.groupby(by, dropna=False)["acc"].agg(["std", "count"]).reset_index()
    table = table.merge(seeds.rename(columns={"std": "acc_seed_std", "count": "trials"}), on=by)
    for m in ("nmi", "ari"):
        if m in win:
            table = table.merge(
                summarize(win, by, m)[[*by, "mean"]].rename(columns={"mean": f"{m}_mean"}), on=by
            )
    return table.sort_values(by).reset_index(drop=True)


def window_study(sweep_dir: Path, out: Path, param: str, stem: str, paper: Paper, title: str) -> list[Path]:
    """ACC against ``param`` over each trial's final window (IDFD Fig. 3/4): the window table and the plot (log
    x, the paper's chosen value of ``param`` marked). Ends the program when nothing was evaluated."""
    epochs = load_epochs([sweep_dir])
    epochs = epochs[epochs["status"] == "TERMINATED"]
    if epochs.empty or "acc" not in epochs:
        raise SystemExit(f"{sweep_dir}: no evaluations with ACC in epochs.parquet")
    col = f"{CONFIG}{param}"
    last = epochs.groupby("trial_id")["epoch"].max()
    if last.nunique() > 1:  # e.g. an ASHA sweep: the windows sit at different points of training
        print(
            f"warning: {sweep_dir}: trials ended at different epochs ({sorted(int(e) for e in last.unique())}); "
            "a scheduler stopped some early, so their windows are not comparable with the paper's fixed 2000 epochs"
        )
    win = last_window(epochs)
    hue = "arm" if win["arm"].nunique() > 1 else None
    by = [col] if hue is None else ["arm", col]
    written = write_table(window_table(win, by), out / stem)
    png = plot_metric_vs_param(
        win, col, "acc", out / f"{stem}.png", hue=hue, logx=True,
        mark_x=paper.choice.get(param), mark_label=f"paper's choice ({paper.source})", title=title,
        stat=f"mean ± std of the final-window evaluations of {win['trial_id'].nunique()} trials",
    )  # fmt: skip
    return [*written, png, png.with_suffix(".svg")]


def row_labels(df: pd.DataFrame, row: str, vary: str = "config.alpha") -> pd.Series:
    """``row`` value, with ``(alpha=...)`` appended where one arm was run with several values of ``vary``."""
    if vary not in df:
        return df[row].astype(str)
    n = df.groupby(row)[vary].transform("nunique")
    labelled = df[row].astype(str) + " (" + vary.split(".")[-1] + "=" + df[vary].map("{:g}".format) + ")"
    return df[row].astype(str).where(n <= 1, labelled)


def _order(values: list[str], preferred: Sequence[Any]) -> list[str]:
    rank = {str(v): i for i, v in enumerate(preferred)}
    return sorted(values, key=lambda v: (rank.get(str(v).split(" (")[0], len(rank)), str(v)))


def wide_table(
    df: pd.DataFrame, row: str, col: str, prefix: str, row_order: Sequence[Any], col_order: Sequence[Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(formatted wide table rows x (col, metric) with "mean ± std" in %, long table of the numbers)."""
    longs = [
        summarize(df, [row, col], f"{prefix}.{m}").assign(metric=m)
        for m in ("acc", "nmi", "ari")
        if f"{prefix}.{m}" in df
    ]
    if not longs:
        return pd.DataFrame(), pd.DataFrame()
    long = pd.concat(longs, ignore_index=True)
    cell = lambda r: f"{100 * r['mean']:.1f}" + (f" ± {100 * r['std']:.1f}" if r["count"] > 1 else "")  # noqa: E731
    long["cell"] = long.apply(cell, axis=1)
    wide = long.pivot_table(index=row, columns=[col, "metric"], values="cell", aggfunc="first")
    metrics = list(dict.fromkeys(long["metric"]))
    cols = [
        (c, m) for c in _order(list(long[col].unique()), col_order) for m in metrics if (c, m) in wide.columns
    ]
    wide = wide.reindex(index=_order(list(wide.index), row_order), columns=cols).fillna("-")
    wide.columns = [f"{c} {m.upper()}" for c, m in wide.columns]
    wide = wide.join(df.groupby(row).size().rename("trials")).reset_index()
    return wide.rename(columns={row: "arm"}), long.drop(columns="cell")


def write_wide_tables(
    trials: pd.DataFrame,
    row: str,
    col: str,
    row_order: Sequence[Any],
    col_order: Sequence[Any],
    out: Path,
    stem: str,
    long_names: dict[str, str],
) -> list[Path]:
    """``<stem>_final`` and ``<stem>_best_label_selected`` (the label-selected oracle, marked so) wide tables
    (% mean ± std over seeds) and ``<stem>_long`` (the final numbers, columns renamed by ``long_names``)."""
    written = []
    for prefix in ("final", "best_label_selected"):
        wide, long = wide_table(trials, row, col, prefix, row_order, col_order)
        if wide.empty:
            continue
        if prefix != "final":
            wide = wide.rename(columns={"arm": "arm (best evaluation, LABEL-SELECTED)"})
        written += write_table(wide, out / f"{stem}_{prefix}")
        if prefix == "final":
            written += write_table(long.rename(columns=long_names), out / f"{stem}_long")
    return written


def sensitivity_study(
    sweep_dirs: list[Path], out: Path, param: str, figure: str, title: str, xlabel: str, paper: Paper
) -> list[Path]:
    """A metric-against-``param`` study over datasets (DCCS Fig. 5/6): ``<figure>.png`` (a panel per dataset:
    ACC/NMI/ARI mean ± std over seeds, the paper's choice per dataset marked), ``acc_vs_<p>.png`` (ACC, a line
    per dataset) and the ``<p>`` table (mean/std/median per dataset and value), ``<p>`` = ``param`` without
    ``config.``."""
    metrics = ("final.acc", "final.nmi", "final.ari")
    done = finished_or_exit(sweep_dirs, [param])
    name = param.removeprefix(CONFIG)
    panels = plot_metrics_panels(
        done, param, metrics, out / f"{figure}.png", title=title, xlabel=xlabel,
        marks=paper.choice or None, mark_label=f"paper's choice ({paper.source})",
    )  # fmt: skip
    acc = plot_metric_vs_param(done, param, "final.acc", out / f"acc_vs_{name}.png", hue="dataset")
    table = metrics_table(done, ["dataset", param], metrics).rename(columns={param: name, "count": "trials"})
    return [panels, panels.with_suffix(".svg"), acc, acc.with_suffix(".svg"), *write_table(table, out / name)]
