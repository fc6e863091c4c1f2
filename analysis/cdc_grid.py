"""CDC Sec. 4.4 (Trinh & Pham): grid search of the loss weights eta, beta and lambda (``lam``).

The paper names only the winner (eta 0.75, beta 1e-3, lambda 1e-3; 1e-6 for CIFAR-10). From a grid sweep this
writes:
- ``grid_best``: the 10 best cells by final ACC. Choosing a cell by ACC uses the labels (as the paper's tuning
  did): the table says so. ``final.*`` values are each trial's last evaluation (no selection over epochs);
  ``best_label_selected.acc`` is the best evaluation of the trial chosen with the labels (an oracle);
- ``grid_best_label_free``: the cell that the label-free silhouette would pick, with its ACC, for contrast;
- ``grid_marginal_<w>``: ACC mean/std/median per value of each weight, pooled over the other two (and seeds);
  and ``grid_acc_vs_<w>.png`` plots of the same;
- ``grid_acc_heatmaps.png`` (+ ``grid_heatmap_<a>_<b>`` tables): mean final ACC over each pair of weights,
  averaged over the third.

Usage: python analysis/cdc_grid.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pandas as pd

from tuneclust.papers import Paper, analysis_cli, finished_or_exit
from tuneclust.render import plot_metric_vs_param, pyplot, save_figure, summarize, write_table

WEIGHTS = ["eta", "beta", "lam"]
ACC = "final.acc"
PAPER = Paper("Trinh & Pham, Sec. 4.4", choice={"eta": 0.75, "beta": 1e-3, "lam": 1e-3})
"""The winning cell the paper names (lambda 1e-6 on CIFAR-10); it reports no per-cell scores."""


def best_cells(trials: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The n best (eta, beta, lam) cells by mean final ACC over seeds; selection by labels, marked."""
    cols = [f"config.{w}" for w in WEIGHTS]
    agg = {
        c: "mean"
        for c in ("final.acc", "final.nmi", "final.ari", "final.silhouette", "best_label_selected.acc")
    }
    agg = {c: f for c, f in agg.items() if c in trials}
    table = trials.groupby(cols, dropna=False).agg(agg).reset_index()
    table["seeds"] = trials.groupby(cols, dropna=False).size().to_numpy()
    table = table.sort_values(ACC, ascending=False).head(n).reset_index(drop=True)
    table.insert(0, "rank (selected by ACC: uses labels)", range(1, len(table) + 1))
    return table.rename(columns=lambda c: c.removeprefix("config."))


def label_free_pick(trials: pd.DataFrame) -> pd.DataFrame:
    """The cell with the best mean final silhouette (no labels) and its ACC."""
    if "final.silhouette" not in trials or trials["final.silhouette"].isna().all():
        return pd.DataFrame({"note": ["no silhouette recorded"]})
    cols = [f"config.{w}" for w in WEIGHTS]
    cells = trials.groupby(cols, dropna=False)[["final.silhouette", ACC, "final.nmi"]].mean().reset_index()
    best = cells.sort_values("final.silhouette", ascending=False).head(1)
    return best.rename(columns=lambda c: c.removeprefix("config.")).reset_index(drop=True)


def heatmaps(trials: pd.DataFrame, out: Path) -> list[Path]:
    """Mean final ACC over each pair of weights (averaged over the third): tables and one figure."""
    pairs = list(combinations(WEIGHTS, 2))
    fig, axes = pyplot().subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2))
    written = []
    for ax, (a, b) in zip(axes, pairs):
        grid = trials.pivot_table(index=f"config.{a}", columns=f"config.{b}", values=ACC, aggfunc="mean")
        written += write_table(
            grid.rename_axis(index=a, columns=b).reset_index(), out / f"grid_heatmap_{a}_{b}"
        )
        im = ax.imshow(grid.to_numpy(), origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns], rotation=45)
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
        ax.set_xlabel(b)
        ax.set_ylabel(a)
        for (i, j), v in pd.DataFrame(grid.to_numpy()).stack().items():
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax, label="ACC, last evaluation (mean)")
        if PAPER.choice[a] in grid.index and PAPER.choice[b] in grid.columns:  # the paper's cell, boxed
            i, j = list(grid.index).index(PAPER.choice[a]), list(grid.columns).index(PAPER.choice[b])
            ax.add_patch(pyplot().Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="r", lw=2))
    fig.suptitle(
        "CDC: final ACC over the loss weights (mean over the third weight and seeds; red box: the paper's choice)"
    )
    png = save_figure(fig, out / "grid_acc_heatmaps.png")
    return [*written, png, png.with_suffix(".svg")]


def study(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials = finished_or_exit(sweep_dirs)
    written = write_table(best_cells(trials), out / "grid_best")
    written += write_table(label_free_pick(trials), out / "grid_best_label_free")
    for w in WEIGHTS:
        col = f"config.{w}"
        written += write_table(
            summarize(trials, [col], ACC).rename(columns={col: w}), out / f"grid_marginal_{w}"
        )
        png = plot_metric_vs_param(
            trials, col, ACC, out / f"grid_acc_vs_{w}.png", logx=True, mark_x=PAPER.choice[w],
            mark_label=f"paper's choice ({PAPER.source})", title=f"CDC: ACC against {w} (other weights pooled)",
        )  # fmt: skip
        written += [png, png.with_suffix(".svg")]
    return written + heatmaps(trials, out)


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, study, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
