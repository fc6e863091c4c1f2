"""ICS (Das, Ghosh, Bhowmick), Table 2: clustering of imbalanced MNIST subsets (class c kept with probability
rising linearly from r_min for class 0 to 1 for class 9).

Usage: python analysis/ics_imbalance.py <sweep_dir> [--out DIR]
Writes table2_imbalance.md/.csv/.tex (per r_min: ACC and NMI mean ± std over seeds, beside the paper's ACC of
ICS and DEC) and table2_acc_vs_rmin.png. Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.papers import Paper, analysis_cli, finished_or_exit
from tuneclust.render import metrics_table, pyplot, readable, save_figure, statistic, write_table

PARAM = "data.imbalance_r_min"
PAPER = Paper(
    "Das et al., Table 2 (imbalanced MNIST)",
    ("ACC",),
    {
        "ICS": {0.1: (0.8802,), 0.3: (0.945,), 0.5: (0.9612,), 0.7: (0.972,), 0.9: (0.9791,)},
        "DEC": {0.1: (0.7010,), 0.3: (0.8092,), 0.5: (0.8268,), 0.7: (0.8469,), 0.9: (0.8541,)},
    },
)


def table(done: pd.DataFrame) -> pd.DataFrame:
    """Per r_min: our ACC and NMI (mean, std over seeds), trials, and the paper's ACC of ICS and DEC."""
    out = metrics_table(done, [PARAM], ["final.acc", "final.nmi"])
    cols = [PARAM, "acc_mean", "acc_std", "count", "nmi_mean", "nmi_std"]
    out = out[[c for c in cols if c in out]].rename(columns={PARAM: "r_min", "count": "trials"})
    key = out["r_min"].round(6)
    out["paper_acc"] = [PAPER.score("ICS", r, "ACC") for r in key]
    out["paper_dec_acc"] = [PAPER.score("DEC", r, "ACC") for r in key]
    return out.reset_index(drop=True)


def plot(tab: pd.DataFrame, done: pd.DataFrame, path: Path) -> Path:
    """ACC against r_min: ours (mean ± std over seeds) and the paper's ICS and DEC rows."""
    fig, ax = pyplot().subplots(figsize=(5, 3.6))
    ax.errorbar(
        tab["r_min"], tab["acc_mean"], yerr=tab["acc_std"].fillna(0), marker="o", capsize=3, label="ours"
    )
    for row, style in (("ICS", "k--"), ("DEC", "k:")):
        ref = sorted(PAPER.scores[row])
        ax.plot(
            ref, [PAPER.score(row, r, "ACC") for r in ref], style, marker="s", ms=4, label=f"paper: {row}"
        )
    ax.set_xlabel("r_min (smallest class share)")
    ax.set_ylabel(readable("final.acc"))
    ax.grid(alpha=0.3)
    ax.legend(title=f"ours: {statistic(done, [PARAM])}", fontsize=8, title_fontsize=8)
    ax.set_title("ICS Table 2: imbalanced MNIST")
    return save_figure(fig, path)


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    done = finished_or_exit(sweep_dirs, [PARAM])
    tab = table(done)
    png = plot(tab, done, out / "table2_acc_vs_rmin.png")
    return [png, png.with_suffix(".svg"), *write_table(tab, out / "table2_imbalance")]


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
