"""IDFD Fig. 11 / Table 4 (Tao, Takagi, Nakata, ICLR 2021, App. C.3): the effect of each data augmentation.

Arms of analysis interest: ``all``, ``no_crop``, ``no_color``, ``no_gray``, ``no_flip`` (Fig. 11) and ``no_aug``
(Table 4's "W/O DA"). Writes ``fig11_acc.png`` (final ACC per arm, mean ± std over seeds), ``fig11_final``
(ACC/NMI/ARI per arm at the last evaluation), ``fig11_best_label_selected`` (best evaluation chosen WITH the
labels, marked so) and ``table4_paper`` (the paper's CIFAR-10 rows with and without augmentation).

Usage: python analysis/idfd_augment.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.report import (
    ablation_table,
    analysis_cli,
    load_trials,
    pyplot,
    save_figure,
    sort_in_order,
    summarize,
    write_table,
)

ARMS = ["all", "no_crop", "no_color", "no_gray", "no_flip", "no_aug"]
PAPER = pd.DataFrame(  # Table 4 of the paper, CIFAR-10 columns, %
    {
        "row": ["ID W/O DA", "IDFD W/O DA", "ID With DA", "IDFD With DA"],
        "ACC": [18.7, 23.6, 76.6, 81.5],
        "NMI": [9.5, 12.1, 65.7, 71.1],
        "ARI": [4.1, 6.0, 58.3, 66.3],
    }
)


def bar_plot(trials: pd.DataFrame, metric: str, path: Path) -> Path:
    """Bars of ``metric`` per arm (mean ± std over seeds), arms in the order of :data:`ARMS`."""
    s = sort_in_order(summarize(trials, ["arm"], metric), "arm", ARMS)
    fig, ax = pyplot().subplots(figsize=(5.5, 3.5))
    ax.bar(range(len(s)), 100 * s["mean"], yerr=100 * s["std"].fillna(0), capsize=3, color="tab:blue")
    ax.set_xticks(range(len(s)), [str(a) for a in s["arm"]], rotation=30)
    ax.set_ylabel(f"{metric.split('.')[-1].upper()} (%)")
    ax.set_title("IDFD: effect of each augmentation (Fig. 11)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials = load_trials(sweep_dirs)
    written = write_table(PAPER, out / "table4_paper")
    for prefix in ("final", "best_label_selected"):
        cols = [f"{prefix}.{m}" for m in ("acc", "nmi", "ari") if f"{prefix}.{m}" in trials]
        if not cols:
            continue
        table = ablation_table(trials, cols, arm_order=ARMS)
        if prefix != "final":
            table = table.rename(columns={"arm": "arm (best evaluation, LABEL-SELECTED)"})
        written += write_table(table, out / f"fig11_{prefix}")
    if "final.acc" in trials:
        written.append(bar_plot(trials, "final.acc", out / "fig11_acc.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
