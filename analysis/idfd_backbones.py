"""IDFD Table 2 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.2.3): ID(tuned) and IDFD on four networks (CIFAR-10).

Writes arms x backbones tables of ACC/NMI/ARI in %, mean ± std over seeds: ``table2_final`` (value at the
last evaluation), ``table2_best_label_selected`` (best evaluation chosen WITH the labels, marked so),
``table2_long`` (the numbers) and ``table2_paper`` (the paper's Table 2); plus ``table2_acc.png``, ACC per
backbone and arm (mean ± std over seeds, final values).

Usage: python analysis/idfd_backbones.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.report import (
    analysis_cli,
    load_trials,
    pyplot,
    save_figure,
    sibling_script,
    summarize,
    write_table,
)

ARMS = ["ID_tuned", "IDFD"]
BACKBONES = ["convnet", "vgg16", "resnet18", "resnet34"]
PAPER = pd.DataFrame(  # Table 2 of the paper, %: ACC/NMI/ARI per network
    {
        "arm": ARMS,
        "convnet": ["26.8/15.0/8.9", "42.0/32.7/23.2"],
        "vgg16": ["39.3/31.6/20.9", "56.8/46.7/36.5"],
        "resnet18": ["77.6/68.2/61.6", "81.5/71.1/66.3"],
        "resnet34": ["80.2/71.1/64.6", "82.7/73.4/68.4"],
    }
)


def grouped_bars(trials: pd.DataFrame, metric: str, path: Path) -> Path:
    """Bars of ``metric`` (mean ± std over seeds, in %) per backbone, one bar per arm."""
    s = summarize(trials, ["config.backbone", "arm"], metric)
    nets = [b for b in BACKBONES if b in set(s["config.backbone"])] + sorted(
        set(s["config.backbone"]) - set(BACKBONES)
    )
    arms = [a for a in ARMS if a in set(s["arm"])] + sorted(set(s["arm"]) - set(ARMS))
    width = 0.8 / len(arms)
    fig, ax = pyplot().subplots(figsize=(5.5, 3.5))
    for i, arm in enumerate(arms):
        sub = s[s["arm"] == arm].set_index("config.backbone").reindex(nets)
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(nets))]
        ax.bar(xs, 100 * sub["mean"], width, yerr=100 * sub["std"].fillna(0), capsize=3, label=arm)
    ax.set_xticks(range(len(nets)), nets)
    ax.set_ylabel(f"{metric.split('.')[-1].upper()} (%)")
    ax.set_title("ID(tuned) vs IDFD per network (Table 2)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials = load_trials(sweep_dirs)
    written = write_table(PAPER, out / "table2_paper")
    written += sibling_script(__file__, "idfd_ablation").write_wide_tables(
        trials, "arm", "config.backbone", ARMS, BACKBONES, out, "table2", {"config.backbone": "backbone"}
    )
    if "final.acc" in trials:
        written.append(grouped_bars(trials, "final.acc", out / "table2_acc.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
