"""Figures and tables from results tables (reading sweeps is :mod:`tuneclust.results`): readable column names,
the statistic every error bar states (mean ± std over N seeds, at the equal budget), per-group summaries, tables as
Markdown, CSV and LaTeX, figures as PNG and SVG, and a trial's learning curves (drawn by the sweep's driver).
``best_label_selected.*`` columns were selected with the labels; their names say so."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneclust.results import CONFIG, SEED

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


def metric_label(column: str) -> str:
    """A metric's short name for a legend: ``final.acc`` -> ``ACC``."""
    name = column.split(".")[-1]
    return METRIC_NAMES.get(name, name)


def statistic(df: pd.DataFrame, by: Sequence[str]) -> str:
    """What an error bar over the rows of each group of ``by`` shows: ``mean ± std over 3 seeds`` (or ``over
    2-3 trials`` when groups differ in size, ``trials`` when the rows are not all different seeds)."""
    sizes = df.groupby(list(by), dropna=False).size() if by else pd.Series([len(df)])
    lo, hi = (int(sizes.min()), int(sizes.max())) if len(sizes) else (0, 0)
    seeds = SEED in df and (df.groupby(list(by), dropna=False)[SEED].nunique() == sizes).all()
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
        " & ".join(map(esc, cols)) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(map(esc, row)) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(lines)


def summarize(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Mean, std, median and count of ``metric`` per group (e.g. over seeds)."""
    return df.groupby(by, dropna=False)[metric].agg(["mean", "std", "median", "count"]).reset_index()


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


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 150, svg: bool = True) -> Path:
    """Tight layout, write ``path`` (PNG at ``dpi``; its folder is created) and, with ``svg``, the same figure as
    vector SVG beside it (``.svg``, for a paper), close the figure; returns ``path``."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if svg:
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
    ax.set(xlabel=readable(param), ylabel=readable(metric))
    if title:
        ax.set_title(title, fontsize=10)
    by = [param] if hue is None else [hue, param]
    stat = stat or statistic(df, by)
    legend_title = stat if hue is None else f"{readable(hue)}; {stat}"
    ax.legend(title=legend_title, fontsize=8, title_fontsize=8)
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
        ax.set(title=title.format(name), xlabel=xlabel or readable(param), ylabel=ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(title=statistic(sub, [param]), fontsize=8, title_fontsize=8)
    return save_figure(fig, path)


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
    return [save_figure(fig, out / f"{name}_curves.png", dpi=110, svg=False)]
