"""CDC Table 3 (Trinh & Pham, Sec. 4.4): impact of the loss functions, ACC (NMI) per arm.

Arms (search_spaces/cdc_ablation.yaml): AE + L_r, AE + L_AE (pre-training only, k-means on Z), AE* + L_c,
AE* + L_c + L_a, AE* + L_DC (fine-tuned, argmax q). Writes:
- ``table3``: per arm, mean ACC (NMI) in % over seeds at each trial's last evaluation (no selection by labels),
  with std, the number of trials and, for the fine-tuned arms, the same trials' ACC at the end of pre-training
  (their evaluation with phase 1 and finetune_iter 0: the AE* they start from) and the gain over it;
- ``table3_detail``: mean ± std of final ACC/NMI/ARI and of the label-selected best ACC (an oracle, marked);
- ``table3_paper``: the paper's Table 3 for the four datasets, for comparison.

Usage: python analysis/cdc_ablation.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.report import ablation_table, analysis_cli, load_results, sort_in_order, write_table

ARMS = {
    "AE_Lr": "AE + L_r",
    "AE_LAE": "AE + L_AE",
    "AEs_Lc": "AE* + L_c",
    "AEs_Lc_La": "AE* + L_c + L_a",
    "AEs_LDC": "AE* + L_DC",
}
PAPER = pd.DataFrame(  # Table 3 of the paper: ACC (NMI) in %
    {
        "dataset": ["Reuters-10K", "Fashion-MNIST", "STL-10", "CIFAR-10"],
        "AE + L_r": ["75.2 (51.2)", "56.4 (59.0)", "75.4 (68.5)", "75.5 (62.4)"],
        "AE + L_AE": ["79.5 (54.9)", "60.1 (58.1)", "86.3 (78.0)", "75.6 (62.7)"],
        "AE* + L_c": ["77.8 (58.5)", "61.1 (64.0)", "95.0 (90.2)", "78.4 (67.1)"],
        "AE* + L_c + L_a": ["81.5 (60.7)", "63.1 (64.3)", "95.7 (91.3)", "79.1 (68.5)"],
        "AE* + L_DC": ["82.6 (60.7)", "64.9 (64.5)", "96.3 (91.8)", "79.2 (68.5)"],
    }
)


def pretrained_scores(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per trial, ACC/NMI at the phase boundary (first evaluation with phase 1 and finetune_iter 0)."""
    need = {"phase", "finetune_iter", "acc", "nmi", "trial_id", "arm"}
    if epochs.empty or not need <= set(epochs.columns):
        return pd.DataFrame(columns=["trial_id", "arm", "pre_acc", "pre_nmi"])
    at = epochs[(epochs["phase"] == 1) & (epochs["finetune_iter"] == 0)].sort_values("epoch")
    at = at.groupby("trial_id", as_index=False).first()
    return at[["trial_id", "arm", "acc", "nmi"]].rename(columns={"acc": "pre_acc", "nmi": "pre_nmi"})


def table3(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per arm in the paper's order: ACC (NMI) %, std, trials, pre-trained ACC and gain."""
    pre = pretrained_scores(epochs)
    df = trials.merge(pre[["trial_id", "pre_acc"]], on="trial_id", how="left")
    rows = []
    for arm, sub in df.groupby("arm", sort=False):
        acc, nmi = 100 * sub["final.acc"], 100 * sub["final.nmi"]
        pre_acc = 100 * sub["pre_acc"]
        rows.append(
            {
                "arm": arm,
                "row": ARMS.get(arm, arm),
                "ACC (NMI) %": f"{acc.mean():.1f} ({nmi.mean():.1f})",
                "ACC std": round(acc.std(), 2) if len(acc) > 1 else float("nan"),
                "trials": len(sub),
                "pre-trained ACC %": round(pre_acc.mean(), 1) if pre_acc.notna().any() else float("nan"),
                "gain ACC %": round((acc - pre_acc).mean(), 1) if pre_acc.notna().any() else float("nan"),
            }
        )
    return sort_in_order(pd.DataFrame(rows), "arm", list(ARMS))


def study(sweep_dirs: list[Path], out: Path) -> list[Path]:
    (sweep_dir,) = sweep_dirs
    trials, epochs = load_results(sweep_dir)
    if "final.acc" not in trials:
        trials = trials.iloc[0:0]
    else:  # evaluated and not errored
        trials = trials[trials["final.acc"].notna() & (trials["status"] == "TERMINATED")]
    if trials.empty:
        raise SystemExit(f"{sweep_dir}: no trial with a final ACC")
    written = write_table(table3(trials, epochs), out / "table3")
    metrics = [c for c in ("final.acc", "final.nmi", "final.ari", "best_label_selected.acc") if c in trials]
    detail = ablation_table(trials, metrics, arm_order=list(ARMS))
    detail.insert(1, "row", detail["arm"].map(lambda a: ARMS.get(a, a)))
    detail = detail.rename(
        columns={"best_label_selected.acc": "best_label_selected.acc (oracle: uses labels)"}
    )
    written += write_table(detail, out / "table3_detail")
    return written + write_table(PAPER, out / "table3_paper")


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, study, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
