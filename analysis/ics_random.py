"""ICS (Das, Ghosh, Bhowmick), Fig. 6: ACC against each of gamma, omega and beta over 100 random samples
(uniform in [0, 1], alpha = 1) on MNIST with the shallow network.

Usage: python analysis/ics_random.py <sweep_dir> [--out DIR]
Writes fig6_acc_vs_weights.png (one scatter per weight with the mean ACC per tenth of [0, 1]), top_trials.md/.csv
(the best samples) and weight_correlation.md/.csv (Spearman correlation of each weight with ACC).
ACC is the value at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tuneclust.papers import Paper, analysis_cli, finished_or_exit
from tuneclust.render import pyplot, readable, save_figure, write_table

WEIGHTS = ("gamma", "omega", "beta")  # Fig. 6 (a), (b), (c)
PAPER = Paper("Das et al., Sec. 4.4", choice={"beta": 0.8, "gamma": 0.01, "omega": 0.1})
"""The weights the paper chose from this study (shallow network); Fig. 6 is a scatter only."""


def plot(done: pd.DataFrame, path: Path) -> Path:
    """One panel per weight: every trial's ACC, the mean per bin, the paper's choice."""
    fig, axes = pyplot().subplots(1, 3, figsize=(12, 3.6), sharey=True)
    bins = np.linspace(0, 1, 11)
    for ax, w in zip(axes, WEIGHTS):
        x, y = done[f"config.{w}"].astype(float), done["final.acc"].astype(float)
        ax.scatter(x, y, s=14, alpha=0.7)
        mean = y.groupby(pd.cut(x, bins, include_lowest=True), observed=True).mean()
        ax.plot([iv.mid for iv in mean.index], mean.values, "k-", lw=1, label="mean per bin")
        ax.axvline(PAPER.choice[w], color="r", ls="--", lw=1, label="paper's choice")
        ax.set_xlabel(f"{w} (loss weight)")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(readable("final.acc"))
    axes[0].legend(title=f"dots: {len(done)} trials", fontsize=8, title_fontsize=8)
    fig.suptitle(
        "ICS Fig. 6: random search of the loss weights (alpha = 1); line: mean ACC per tenth of [0, 1]"
    )
    return save_figure(fig, path)


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    done = finished_or_exit(sweep_dirs)
    png = plot(done, out / "fig6_acc_vs_weights.png")
    written = [png, png.with_suffix(".svg")]
    cols = [f"config.{w}" for w in ("beta", "gamma", "omega")] + [
        c for c in ("final.acc", "final.nmi", "final.ari") if c in done
    ]
    top = done.sort_values("final.acc", ascending=False)[["trial_id", *cols]].head(10)
    written += write_table(top.rename(columns=lambda c: c.removeprefix("config.")), out / "top_trials")
    corr = pd.DataFrame(
        {
            "weight": list(WEIGHTS),
            "spearman_vs_acc": [
                done[f"config.{w}"].corr(done["final.acc"], method="spearman") for w in WEIGHTS
            ],
            "trials": len(done),
        }
    )
    written += write_table(corr, out / "weight_correlation")
    return written


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
