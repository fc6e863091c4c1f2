"""Results tables -> rankings, metric-vs-parameter plots (mean ± std over seeds) and ablation tables.

Reads only the Parquet tables a sweep writes (``trials.parquet``, ``epochs.parquet``) and the stored
``spec.yaml``; the ``analysis/`` scripts build each paper's figure or table from these functions.
Columns ``best_label_selected.*`` were selected over evaluations using the labels; they are marked so here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

CONFIG = "config."


def load_results(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) of a sweep folder; ``epochs`` is empty if no evaluation was recorded."""
    d = Path(sweep_dir)
    trials = pd.read_parquet(d / "trials.parquet")
    epochs = pd.read_parquet(d / "epochs.parquet") if (d / "epochs.parquet").exists() else pd.DataFrame()
    return trials, epochs


def load_spec_dict(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / "spec.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def objective(sweep_dir: str | Path) -> tuple[str, str]:
    """(metric, mode) of the sweep's objective, from its stored spec (default acc, max)."""
    from tuneclust.spec import objective_mode

    obj = load_spec_dict(sweep_dir).get("objective", {}) or {}
    metric = obj.get("metric") or "acc"
    return metric, obj.get("mode") or objective_mode(metric)


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


def plot_metric_vs_param(
    df: pd.DataFrame, param: str, metric: str, path: str | Path, hue: str | None = None, logx: bool = False
) -> Path:
    """Line plot of ``metric`` (mean ± std over the other dimensions, e.g. seeds) against ``param``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    groups = [(None, df)] if hue is None else list(df.groupby(hue, dropna=False))
    for name, sub in groups:
        s = summarize(sub, [param], metric).sort_values(param)
        x = s[param]
        numeric = pd.api.types.is_numeric_dtype(x)
        xs = x if numeric else np.arange(len(x))
        ax.errorbar(xs, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=None if hue is None else str(name))
        if not numeric:
            ax.set_xticks(xs, [str(v) for v in x], rotation=30)
    if logx and pd.api.types.is_numeric_dtype(df[param]) and (df[param] > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(param.removeprefix(CONFIG))
    ax.set_ylabel(metric)
    if hue is not None:
        ax.legend(title=hue.removeprefix(CONFIG), fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ablation_table(df: pd.DataFrame, metric: str | list[str], arm_order: list[str] | None = None) -> pd.DataFrame:
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
    if arm_order:
        order = {a: i for i, a in enumerate(arm_order)}
        out = out.sort_values("arm", key=lambda s: s.map(lambda a: order.get(a, len(order))))
    return out.reset_index(drop=True)


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
    lines = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\hline", " & ".join(esc(c) for c in cols) + r" \\", r"\hline"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", ""]
    return "\n".join(lines)


def metric_column(trials: pd.DataFrame, metric: str) -> str:
    """The trials-table column holding a metric's value at the last evaluation."""
    return f"final.{metric}"


def ranking(sweep_dir: str | Path, metric: str | None = None) -> pd.DataFrame:
    """Trials ranked by the objective's value at their last evaluation (errored trials last)."""
    trials, _ = load_results(sweep_dir)
    obj, mode = objective(sweep_dir)
    metric = metric or obj
    from tuneclust.spec import objective_mode

    mode = mode if metric == obj else objective_mode(metric)
    col = metric_column(trials, metric)
    params = searched_params(sweep_dir, trials)
    keep = ["trial_id", "arm", *params, "status", "epochs_run", col]
    for extra in ("final.acc", "final.nmi", "final.ari", "final.silhouette"):
        if extra in trials and extra not in keep:
            keep.append(extra)
    if f"best_label_selected.{metric}" in trials:
        keep.append(f"best_label_selected.{metric}")
    keep = [c for c in keep if c in trials]
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


def write_report(sweep_dir: str | Path, metric: str | None = None, out: str | Path | None = None) -> list[Path]:
    """Ranking table, one metric-vs-parameter plot per searched parameter, and an ablation table if arms."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir / "report"
    trials, _ = load_results(sweep_dir)
    metric = metric or objective(sweep_dir)[0]
    col = metric_column(trials, metric)
    written = write_table(ranking(sweep_dir, metric), out / "ranking")
    done = trials[trials["status"] == "TERMINATED"] if "status" in trials else trials
    if col not in done or done.empty:
        return written
    params = [p for p in searched_params(sweep_dir, trials) if p != f"{CONFIG}seed"]
    hue = "arm" if done["arm"].nunique() > 1 else None
    for p in params:
        logx = pd.api.types.is_numeric_dtype(done[p]) and done[p].min() > 0 and done[p].max() / done[p].min() >= 100
        written.append(plot_metric_vs_param(done, p, col, out / f"{metric}_vs_{p.removeprefix(CONFIG)}.png", hue, logx))
    if done["arm"].nunique() > 1:
        cols = [c for c in ("final.acc", "final.nmi", "final.ari", col) if c in done]
        written += write_table(ablation_table(done, list(dict.fromkeys(cols))), out / "ablation")
    return written
