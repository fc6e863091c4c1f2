"""ICS (Das, Ghosh, Bhowmick), Fig. 5: ACC of the model with terms of Eq. 7 removed (ablation arms).

Usage: python analysis/ics_ablation.py <sweep_dir> [--out DIR]
Writes fig5_ablation.png (bar per arm, mean ± std of ACC over seeds) and ablation.md/.csv/.tex (ACC, NMI, ARI
per arm, mean ± std). Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tuneclust.report import ablation_table, load_results, summarize, write_table

ARM_ORDER = ["full", "no_Lr", "no_Lc", "no_Lb", "no_Lt", "Lr_Lc", "Lr_only"]
"""The arms of search_spaces/ics_ablation.yaml; other arm names follow in the order found."""


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran to the end and have an ACC."""
    done = trials[trials["status"] == "TERMINATED"] if "status" in trials else trials
    return done[done["final.acc"].notna()] if "final.acc" in done else done.iloc[0:0]


def plot(done: pd.DataFrame, path: Path) -> None:
    """Bar chart of mean ± std ACC per arm, in ARM_ORDER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(done, ["arm"], "final.acc")
    rank = {a: i for i, a in enumerate(ARM_ORDER)}
    s = s.sort_values("arm", key=lambda c: c.map(lambda a: rank.get(a, len(rank)))).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(1.1 * len(s) + 2, 3.6))
    ax.bar(range(len(s)), s["mean"], yerr=s["std"].fillna(0), capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(s)), s["arm"], rotation=30)
    ax.set_ylabel("ACC (last evaluation)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("ICS Fig. 5: ablation of the loss terms")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    p.add_argument("--out", help="default: <sweep_dir>/analysis")
    args = p.parse_args(argv)
    out = Path(args.out or Path(args.sweep_dir) / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    trials, _ = load_results(args.sweep_dir)
    done = finished(trials)
    if done.empty:
        raise SystemExit(f"{args.sweep_dir}: no finished trial with final.acc")
    plot(done, out / "fig5_ablation.png")
    metrics = [c for c in ("final.acc", "final.nmi", "final.ari") if c in done]
    table = ablation_table(done, metrics, arm_order=ARM_ORDER)
    return [out / "fig5_ablation.png", *write_table(table, out / "ablation")]


if __name__ == "__main__":
    for path in main():
        print(path)
