"""IDFD Fig. 3 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.2.1): ACC of ID against the temperature tau.

The paper plots, per tau, the mean and standard deviation of ACC over the last 500 of 2000 epochs. We take each
trial's evaluations in that window (a trial shorter than 2000 epochs: the last quarter of its evaluations, at
least one), pool them over seeds and report mean/std/median per tau, plus the spread of the per-seed means.
No selection by labels: every evaluation in the window counts.

Usage: python analysis/idfd_tau.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tuneclust.report import analysis_cli, load_results, plot_metric_vs_param, summarize, write_table

PAPER_EPOCHS, PAPER_WINDOW = 2000, 500
"""Fig. 3 and 4 average over the last 500 of 2000 epochs (the last quarter of the run)."""


def last_window(epochs: pd.DataFrame) -> pd.DataFrame:
    """Each trial's evaluations in its final window: epochs > last - 500 for runs of >= 2000 epochs, else the
    last quarter of its evaluations (at least one)."""
    parts = []
    for _, g in epochs.groupby("trial_id", sort=False):
        g = g.sort_values("epoch")
        last = g["epoch"].max()
        if last >= PAPER_EPOCHS:
            parts.append(g[g["epoch"] > last - PAPER_WINDOW])
        else:
            parts.append(g.tail(max(1, math.ceil(len(g) / 4))))
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


def study(sweep_dir: Path, out: Path, param: str, stem: str) -> list[Path]:
    """Window table and ACC-vs-``param`` plot (log x) of one sweep; returns the written files."""
    _, epochs = load_results(sweep_dir)
    if epochs.empty or "acc" not in epochs:
        raise SystemExit(f"{sweep_dir}: no evaluations with ACC in epochs.parquet")
    col = f"config.{param}"
    last = epochs.groupby("trial_id")["epoch"].max()
    if last.nunique() > 1:  # e.g. an ASHA sweep: the windows sit at different points of training
        print(
            f"warning: {sweep_dir}: trials ended at different epochs ({sorted(int(e) for e in last.unique())}); a scheduler "
            "stopped some early, so their windows are not comparable with the paper's fixed 2000 epochs"
        )
    win = last_window(epochs)
    hue = "arm" if win["arm"].nunique() > 1 else None
    by = [col] if hue is None else ["arm", col]
    written = write_table(window_table(win, by), out / stem)
    written.append(plot_metric_vs_param(win, col, "acc", out / f"{stem}.png", hue=hue, logx=True))
    return written


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(
        __doc__, lambda dirs, out: study(dirs[0], out, "tau", "fig3_acc_vs_tau"), argv, multi=False
    )


if __name__ == "__main__":
    raise SystemExit(main())
