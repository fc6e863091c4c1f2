"""ICS (Das, Ghosh, Bhowmick), Table 2: clustering of imbalanced MNIST subsets (class c kept with probability
rising linearly from r_min for class 0 to 1 for class 9).

Usage: python analysis/ics_imbalance.py <sweep_dir> [--out DIR]
Writes table2_imbalance.md/.csv/.tex (per r_min: ACC and NMI mean ± std over seeds, beside the paper's ACC of
ICS and DEC) and table2_acc_vs_rmin.png. Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tuneclust.report import load_results, summarize, write_table

PARAM = "data.imbalance_r_min"
PAPER_ACC = {0.1: 0.8802, 0.3: 0.945, 0.5: 0.9612, 0.7: 0.972, 0.9: 0.9791}  # Table 2, "Ours"
PAPER_DEC_ACC = {0.1: 0.7010, 0.3: 0.8092, 0.5: 0.8268, 0.7: 0.8469, 0.9: 0.8541}  # Table 2, "DEC"


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran to the end and have an ACC."""
    done = trials[trials["status"] == "TERMINATED"] if "status" in trials else trials
    return done[done["final.acc"].notna()] if "final.acc" in done else done.iloc[0:0]


def table(done: pd.DataFrame) -> pd.DataFrame:
    """Per r_min: our ACC and NMI (mean, std over seeds), trials, and the paper's ACC of ICS and DEC."""
    acc = summarize(done, [PARAM], "final.acc").set_index(PARAM)
    out = pd.DataFrame({"acc_mean": acc["mean"], "acc_std": acc["std"], "trials": acc["count"]})
    if "final.nmi" in done:
        nmi = summarize(done, [PARAM], "final.nmi").set_index(PARAM)
        out["nmi_mean"], out["nmi_std"] = nmi["mean"], nmi["std"]
    out = out.reset_index().rename(columns={PARAM: "r_min"}).sort_values("r_min")
    key = out["r_min"].round(6)
    out["paper_acc"] = key.map(PAPER_ACC)
    out["paper_dec_acc"] = key.map(PAPER_DEC_ACC)
    return out.reset_index(drop=True)


def plot(tab: pd.DataFrame, path: Path) -> None:
    """ACC against r_min: ours (mean ± std over seeds) and the paper's ICS and DEC rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(
        tab["r_min"], tab["acc_mean"], yerr=tab["acc_std"].fillna(0), marker="o", capsize=3, label="ours"
    )
    ref = sorted(PAPER_ACC)
    ax.plot(ref, [PAPER_ACC[r] for r in ref], "k--", marker="s", ms=4, label="paper: ICS")
    ax.plot(ref, [PAPER_DEC_ACC[r] for r in ref], ":", color="gray", marker="^", ms=4, label="paper: DEC")
    ax.set_xlabel("r_min")
    ax.set_ylabel("ACC (last evaluation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("ICS Table 2: imbalanced MNIST")
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
    if done.empty or PARAM not in done:
        raise SystemExit(f"{args.sweep_dir}: no finished trial with final.acc and {PARAM}")
    tab = table(done)
    plot(tab, out / "table2_acc_vs_rmin.png")
    return [out / "table2_acc_vs_rmin.png", *write_table(tab, out / "table2_imbalance")]


if __name__ == "__main__":
    for path in main():
        print(path)
