"""CDC Table 3 (Trinh & Pham, Sec. 4.4): impact of the loss functions, ACC (NMI) per arm.

Arms (search_spaces/cdc_ablation.yaml): AE + L_r, AE + L_AE (pre-training only, k-means on Z), AE* + L_c,
AE* + L_c + L_a, AE* + L_DC (fine-tuned, argmax q). Writes:
- ``table3``: per arm, mean ACC (NMI) in % over seeds at each trial's last evaluation (no selection by labels),
  with std, the number of trials and, for the fine-tuned arms, the same trials' ACC at the end of pre-training
  (their evaluation with phase 1 and finetune_iter 0: the AE* they start from) and the gain over it;
- ``table3_detail``: mean ± std of final ACC/NMI/ARI and of the label-selected best ACC (an oracle, marked);
- ``table3_paper``: the paper's Table 3 for the four datasets, for comparison;
- ``table3_acc.png``/``.svg``: final ACC per arm (mean ± std over seeds), the paper's value marked where the
  dataset is one of the paper's columns.

Usage: python analysis/cdc_ablation.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.papers import Paper, analysis_cli, bar_chart, finished_or_exit
from tuneclust.render import ablation_table, sort_in_order, write_table
from tuneclust.results import arm_order, load_epochs

ARMS = {
    "AE_Lr": "AE + L_r",
    "AE_LAE": "AE + L_AE",
    "AEs_Lc": "AE* + L_c",
    "AEs_Lc_La": "AE* + L_c + L_a",
    "AEs_LDC": "AE* + L_DC",
}
PAPER = Paper(
    "Trinh & Pham, Table 3",
    ("ACC", "NMI"),
    {
        "AE + L_r": {"Reuters-10K": (.752, .512), "Fashion-MNIST": (.564, .590), "STL-10": (.754, .685),
                     "CIFAR-10": (.755, .624)},
        "AE + L_AE": {"Reuters-10K": (.795, .549), "Fashion-MNIST": (.601, .581), "STL-10": (.863, .780),
                      "CIFAR-10": (.756, .627)},
        "AE* + L_c": {"Reuters-10K": (.778, .585), "Fashion-MNIST": (.611, .640), "STL-10": (.950, .902),
                      "CIFAR-10": (.784, .671)},
        "AE* + L_c + L_a": {"Reuters-10K": (.815, .607), "Fashion-MNIST": (.631, .643), "STL-10": (.957, .913),
                            "CIFAR-10": (.791, .685)},
        "AE* + L_DC": {"Reuters-10K": (.826, .607), "Fashion-MNIST": (.649, .645), "STL-10": (.963, .918),
                       "CIFAR-10": (.792, .685)},
    },
)  # fmt: skip


def pretrained_scores(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per trial, ACC/NMI at the phase boundary (first evaluation with phase 1 and finetune_iter 0)."""
    need = {"phase", "finetune_iter", "acc", "nmi", "trial_id", "arm"}
    if epochs.empty or not need <= set(epochs.columns):
        return pd.DataFrame(columns=["trial_id", "arm", "pre_acc", "pre_nmi"])
    at = epochs[(epochs["phase"] == 1) & (epochs["finetune_iter"] == 0)].sort_values("epoch")
    at = at.groupby("trial_id", as_index=False).first()
    return at[["trial_id", "arm", "acc", "nmi"]].rename(columns={"acc": "pre_acc", "nmi": "pre_nmi"})


def table3(trials: pd.DataFrame, epochs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
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
    return sort_in_order(pd.DataFrame(rows), "arm", order)


def study(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials, epochs = finished_or_exit(sweep_dirs), load_epochs(sweep_dirs)
    order = arm_order(sweep_dirs)
    written = write_table(table3(trials, epochs, order), out / "table3")
    metrics = [c for c in ("final.acc", "final.nmi", "final.ari", "best_label_selected.acc") if c in trials]
    detail = ablation_table(trials, metrics, arm_order=order)
    detail.insert(1, "row", detail["arm"].map(lambda a: ARMS.get(a, a)))
    detail = detail.rename(
        columns={"best_label_selected.acc": "best_label_selected.acc (oracle: uses labels)"}
    )
    written += write_table(detail, out / "table3_detail")
    paper = Paper(PAPER.source, PAPER.metrics, {a: PAPER.scores[ARMS[a]] for a in ARMS})
    png = bar_chart(trials, "arm", "final.acc", out / "table3_acc.png", order=order, paper=paper,
                    title="CDC Table 3: final ACC per arm")  # fmt: skip
    return [*written, *write_table(PAPER.table("arm"), out / "table3_paper"), png, png.with_suffix(".svg")]


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, study, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
