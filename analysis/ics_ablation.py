"""ICS (Das, Ghosh, Bhowmick), Fig. 5: ACC of the model with terms of Eq. 7 removed (ablation arms).

Usage: python analysis/ics_ablation.py <sweep_dir> [--out DIR]
Writes fig5_ablation.png (bar per arm, mean ± std of ACC over seeds) and ablation.md/.csv/.tex (ACC, NMI, ARI
per arm, mean ± std). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.report import (
    ablation_table,
    analysis_cli,
    finished_or_exit,
    pyplot,
    save_figure,
    sort_in_order,
    summarize,
    write_table,
)

ARM_ORDER = ["full", "no_Lr", "no_Lc", "no_Lb", "no_Lt", "Lr_Lc", "Lr_only"]
"""The arms of search_spaces/ics_ablation.yaml; other arm names follow in the order found."""


def plot(done: pd.DataFrame, path: Path) -> Path:
    """Bar chart of mean ± std ACC per arm, in ARM_ORDER."""
    s = sort_in_order(summarize(done, ["arm"], "final.acc"), "arm", ARM_ORDER)
    fig, ax = pyplot().subplots(figsize=(1.1 * len(s) + 2, 3.6))
    ax.bar(range(len(s)), s["mean"], yerr=s["std"].fillna(0), capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(s)), s["arm"], rotation=30)
    ax.set_ylabel("ACC (last evaluation)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("ICS Fig. 5: ablation of the loss terms")
    return save_figure(fig, path)


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    done = finished_or_exit(sweep_dirs)
    metrics = [c for c in ("final.acc", "final.nmi", "final.ari") if c in done]
    table = ablation_table(done, metrics, arm_order=ARM_ORDER)
    return [plot(done, out / "fig5_ablation.png"), *write_table(table, out / "ablation")]


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
