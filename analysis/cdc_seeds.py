"""CDC Table 2, Fig. 5 and Fig. 4 (Trinh & Pham, Sec. 4.2, 4.4): the default model over random trials (seeds).

Takes one or more sweep folders (one per dataset, e.g. cdc_seeds and cdc_seeds_cifar10) and writes:
- ``table2``: per dataset, mean and median ACC (NMI) in % of the trials' last evaluation (no selection by
  labels), std/min/max, the number of seeds, and the same for the pre-trained AE* (the evaluation at the phase
  boundary: phase 1, finetune_iter 0); ``table2_paper``: the paper's CDC rows;
- ``per_seed``: every trial's pre-trained and final ACC/NMI;
- ``fig5_acc_per_seed.png``: box plot of final ACC over seeds per dataset, each seed a dot (the paper's Fig. 5
  plots ACC per trial);
- ``fig4_finetune_acc.png``: ACC against fine-tuning iterations, one thin line per seed and the mean (Fig. 4).

Usage: python analysis/cdc_seeds.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]  (default: first SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tuneclust.papers import Paper, analysis_cli
from tuneclust.render import pyplot, save_figure, statistic, write_table
from tuneclust.results import load_epochs, load_finished

PAPER = Paper(
    "Trinh & Pham, Table 2 (CDC rows)",
    ("ACC", "NMI"),
    {
        "mean": {"Reuters-10K": (.826, .607), "Fashion-MNIST": (.649, .645), "STL-10": (.963, .918),
                 "CIFAR-10": (.792, .685)},
        "median": {"Reuters-10K": (.839, .619), "Fashion-MNIST": (.660, .646), "STL-10": (.965, .920),
                   "CIFAR-10": (.797, .686)},
    },
)  # fmt: skip


def per_seed(sweep_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per finished trial with pre-trained and final ACC/NMI, its fine-tuning evaluations)."""
    trials, epochs = load_finished(sweep_dirs), load_epochs(sweep_dirs)
    df = trials[["dataset", "trial_id", "config.seed", "final.acc", "final.nmi"]].copy()
    ft = pd.DataFrame(columns=["dataset", "trial_id", "finetune_iter", "acc"])
    if not epochs.empty and {"phase", "finetune_iter"} <= set(epochs.columns):
        ft = epochs[(epochs["phase"] == 1) & epochs["trial_id"].isin(df["trial_id"])]
        ft = ft.sort_values(["trial_id", "epoch"])
        pre = ft[ft["finetune_iter"] == 0].groupby("trial_id", as_index=False).first()
        df = df.merge(
            pre[["trial_id", "acc", "nmi"]].rename(columns={"acc": "pre.acc", "nmi": "pre.nmi"}), "left"
        )
    return df.rename(columns={"config.seed": "seed"}), ft


def _fmt(acc: pd.Series, nmi: pd.Series, how: str) -> str:
    if acc.isna().all():
        return "-"
    return f"{100 * getattr(acc, how)():.1f} ({100 * getattr(nmi, how)():.1f})"


def table2(seeds: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, g in seeds.groupby("dataset", sort=False):
        acc, nmi = g["final.acc"], g["final.nmi"]
        pre_acc, pre_nmi = g.get("pre.acc", pd.Series(dtype=float)), g.get("pre.nmi", pd.Series(dtype=float))
        rows.append(
            {
                "dataset": name,
                "seeds": len(g),
                "mean ACC (NMI) %": _fmt(acc, nmi, "mean"),
                "median ACC (NMI) %": _fmt(acc, nmi, "median"),
                "ACC std %": round(100 * acc.std(), 2) if len(g) > 1 else float("nan"),
                "ACC min-max %": f"{100 * acc.min():.1f}-{100 * acc.max():.1f}",
                "AE* mean ACC (NMI) %": _fmt(pre_acc, pre_nmi, "mean"),
                "AE* median ACC (NMI) %": _fmt(pre_acc, pre_nmi, "median"),
            }
        )
    return pd.DataFrame(rows)


def fig5(seeds: pd.DataFrame, path: Path) -> Path:
    names = list(dict.fromkeys(seeds["dataset"]))
    data = [100 * seeds.loc[seeds["dataset"] == n, "final.acc"].to_numpy() for n in names]
    fig, ax = pyplot().subplots(figsize=(1.6 + 1.4 * len(names), 3.8))
    ax.boxplot(data, showmeans=True, showfliers=False)  # every seed is drawn as a dot below
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=14, alpha=0.7, zorder=3)
    for i, n in enumerate(names, start=1):
        v = PAPER.score("mean", n, "ACC")
        if v is not None:
            label = None if ax.get_legend_handles_labels()[0] else f"paper: mean ACC ({PAPER.source})"
            ax.plot([i - 0.3, i + 0.3], [100 * v] * 2, "k--", lw=1.2, label=label)
    ax.set_ylabel("ACC, last evaluation (%)")
    ax.set_title(f"CDC Fig. 5: ACC over {statistic(seeds, ['dataset']).split(' over ')[1]}", fontsize=9)
    ax.text(0.01, 0.01, "box: quartiles and median; triangle: mean; dots: seeds", transform=ax.transAxes,
            fontsize=7, va="bottom")  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def fig4(ft: pd.DataFrame, path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(5.5, 3.8))
    for i, (name, g) in enumerate(ft.groupby("dataset", sort=False)):
        color = f"C{i}"
        for _, t in g.groupby("trial_id"):
            ax.plot(t["finetune_iter"], 100 * t["acc"], color=color, alpha=0.25, lw=0.8)
        mean = g.groupby("finetune_iter")["acc"].mean()
        ax.plot(mean.index, 100 * mean.to_numpy(), color=color, lw=2, marker="o", ms=3, label=name)
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel("ACC (%)")
    ax.set_title("CDC Fig. 4: ACC during fine-tuning (thin: each seed, thick: mean over seeds)", fontsize=9)
    if len(ft):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def study(sweep_dirs: list[Path], out: Path) -> list[Path]:
    seeds, ft = per_seed(sweep_dirs)
    if seeds.empty:
        raise SystemExit("no trial with a final ACC")
    written = write_table(table2(seeds), out / "table2")
    written += write_table(PAPER.table("statistic"), out / "table2_paper")
    written += write_table(seeds.sort_values(["dataset", "seed"]), out / "per_seed")
    figures = [fig5(seeds, out / "fig5_acc_per_seed.png"), fig4(ft, out / "fig4_finetune_acc.png")]
    return [*written, *figures, *(f.with_suffix(".svg") for f in figures)]


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, study, argv)


if __name__ == "__main__":
    raise SystemExit(main())
