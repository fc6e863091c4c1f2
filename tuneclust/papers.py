"""What the ``analysis/`` scripts share: a paper's numbers (:class:`Paper`), their command line
(:func:`analysis_cli`) and the study renderers (:func:`bar_chart` with the paper's values, :func:`window_study`
for IDFD Fig. 3/4, :func:`write_wide_tables`, :func:`sensitivity_study` for DCCS Fig. 5/6). Each
``analysis/<study>.py`` names its columns and its Paper, loads with :mod:`tuneclust.results` and draws with these
and :mod:`tuneclust.render`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tuneclust import render
from tuneclust.results import CONFIG, load_epochs, load_finished


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
        name = render.metric_label(metric)
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
    p.add_argument("--out", type=Path, help="output folder (default: <first sweep_dir>/analysis)")
    args = p.parse_args(argv)
    dirs = args.sweep_dir if multi else [args.sweep_dir]
    out = args.out or dirs[0] / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    for path in build(dirs, out):
        print(path)
    return 0


def finished_or_exit(sweep_dirs: list[Path], need: Sequence[str] = ()) -> pd.DataFrame:
    """:func:`load_finished` (by ``final.acc``) for an analysis script: ends the program with a message when no
    trial finished, or when a column in ``need`` (e.g. the studied parameter) is missing."""
    done = load_finished(sweep_dirs)
    if done.empty or any(c not in done for c in need):
        what = " and ".join(["final.acc", *need])
        raise SystemExit(f"{' '.join(map(str, sweep_dirs))}: no finished trial with {what}")
    return done


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
    rank = {v: i for i, v in enumerate(order)}
    groups = sorted(df[group].unique(), key=lambda v: rank.get(v, len(rank)))  # stable: others as found
    hues = [None] if hue is None else sorted(df[hue].unique(), key=str)
    width = 0.8 / len(hues)
    scale = 100 if percent else 1
    fig, ax = render.pyplot().subplots(figsize=(1.1 * len(groups) * max(1, len(hues) / 2) + 2.5, 3.6))
    tick_label: str | None = "paper"
    for j, h in enumerate(hues):
        sub = df if h is None else df[df[hue] == h]
        s = render.summarize(sub, [group], metric).set_index(group).reindex(groups)
        xs = [i + (j - (len(hues) - 1) / 2) * width for i in range(len(groups))]
        label = render.metric_label(metric) if h is None else str(h)
        ax.bar(
            xs, scale * s["mean"], width, yerr=scale * s["std"].fillna(0), capsize=3, label=label, alpha=0.85
        )
        for x, g in zip(xs, groups):
            col = h if h is not None else _paper_column(paper, g, sub)
            v = paper.score(g, col, metric) if paper and col is not None else None
            if v is not None:
                ax.plot([x - width / 2, x + width / 2], [scale * v] * 2, "k-", lw=2, label=tick_label)
                tick_label = None  # one legend entry for the paper's ticks
    chosen = paper.choice.get(group) if paper else None
    if chosen in groups:  # the paper's own setting among the groups: shaded
        i = groups.index(chosen)
        ax.axvspan(i - 0.45, i + 0.45, color="grey", alpha=0.15, label="paper's setting")
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=30 if len(groups) > 4 else 0)
    ax.set_ylabel(render.readable(metric) + (" (%)" if percent else ""))
    if not percent:
        ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    by = [group] if hue is None else [group, hue]
    ax.legend(title=render.statistic(df, by), fontsize=8, title_fontsize=8)
    return render.save_figure(fig, path)


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
    table = render.summarize(win, by, "acc").rename(
        columns={"mean": "acc_mean", "std": "acc_std", "median": "acc_median", "count": "evaluations"}
    )
    per_trial = win.groupby([*by, "trial_id"], dropna=False)["acc"].mean().reset_index()
    seeds = per_trial.groupby(by, dropna=False)["acc"].agg(["std", "count"]).reset_index()
    table = table.merge(seeds.rename(columns={"std": "acc_seed_std", "count": "trials"}), on=by)
    for m in [m for m in ("nmi", "ari") if m in win]:
        means = render.summarize(win, by, m)[[*by, "mean"]].rename(columns={"mean": f"{m}_mean"})
        table = table.merge(means, on=by)
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
    written = render.write_table(window_table(win, by), out / stem)
    png = render.plot_metric_vs_param(
        win, col, "acc", out / f"{stem}.png", hue=hue, logx=True,
        mark_x=paper.choice.get(param), mark_label=f"paper's choice ({paper.source})", title=title,
        stat=f"mean ± std of the final-window evaluations of {win['trial_id'].nunique()} trials",
    )  # fmt: skip
    return [*written, png, png.with_suffix(".svg")]


def row_labels(df: pd.DataFrame, row: str, vary: str) -> pd.Series:
    """``row`` value, with ``(<key>=...)`` appended where one arm was run with several values of ``vary``
    (a table column such as ``config.alpha``)."""
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
        render.summarize(df, [row, col], f"{prefix}.{m}").assign(metric=m)
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
        written += render.write_table(wide, out / f"{stem}_{prefix}")
        if prefix == "final":
            written += render.write_table(long.rename(columns=long_names), out / f"{stem}_long")
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
    panels = render.plot_metrics_panels(
        done, param, metrics, out / f"{figure}.png", title=title, xlabel=xlabel,
        marks=paper.choice or None, mark_label=f"paper's choice ({paper.source})",
    )  # fmt: skip
    acc = render.plot_metric_vs_param(done, param, "final.acc", out / f"acc_vs_{name}.png", hue="dataset")
    table = render.metrics_table(done, ["dataset", param], metrics)
    written = render.write_table(table.rename(columns={param: name, "count": "trials"}), out / name)
    return [panels, panels.with_suffix(".svg"), acc, acc.with_suffix(".svg"), *written]
