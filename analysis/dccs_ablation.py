"""DCCS (Zhao et al., ECCV 2020), Table 5: ACC, NMI and ARI of the loss ablation arms M1-M4, per dataset.

Usage: python analysis/dccs_ablation.py <sweep_dir> [<sweep_dir> ...] [--out DIR]
(e.g. runs/dccs_ablation runs/dccs_ablation_fmnist: the CIFAR-10 and Fashion-MNIST halves).
Writes table5_ablation.md/.csv/.tex (per arm: which losses are on, then mean ± std over seeds of ACC/NMI/ARI per
dataset, and the paper's values where it has the dataset), table4_assignment.md/.csv/.tex (argmax zc vs k-means
on z, zc, zs per arm and dataset, as the paper's Table 4) and fig_ablation.png/.svg (ACC per arm, a bar per dataset, mean ± std over seeds, the paper's values marked).
Values at the last evaluation: no selection by labels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tuneclust.papers import Paper, analysis_cli, bar_chart, finished_or_exit
from tuneclust.render import ablation_table, sort_in_order, write_table
from tuneclust.results import arm_order

METRICS = ("final.acc", "final.nmi", "final.ari")
PAPER = Paper(
    "Zhao et al. 2020, Table 5",
    ("ACC", "NMI", "ARI"),
    {
        "M1": {"fmnist": (0.618, 0.551, 0.435), "cifar10": (0.213, 0.076, 0.040)},
        "M2": {"fmnist": (0.692, 0.621, 0.532), "cifar10": (0.225, 0.085, 0.048)},
        "M3": {"fmnist": (0.725, 0.694, 0.605), "cifar10": (0.645, 0.557, 0.463)},
        "M4": {"fmnist": (0.756, 0.704, 0.623), "cifar10": (0.656, 0.569, 0.469)},
    },
)
VIEWS = {
    "argmax zc": "final.acc",
    "k-means z": "final.kmeans_z_acc",
    "k-means zc": "final.kmeans_zc_acc",
    "k-means zs": "final.kmeans_zs_acc",
}


def losses_on(done: pd.DataFrame) -> pd.DataFrame:
    """Per arm: which of L_Adv, L_MI, L_Aug are switched on (from the trials' resolved config)."""
    cols = {"config.adv": "L_Adv", "config.mi": "L_MI", "config.aug": "L_Aug"}
    have = [c for c in cols if c in done]
    on = done.groupby("arm", sort=False)[have].first().astype(bool).replace({True: "x", False: ""})
    return on.rename(columns=cols).reset_index()


def table5(done: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Arms x (losses on, then ACC/NMI/ARI mean ± std per dataset, and the paper's numbers)."""
    out = losses_on(done)
    for name, sub in done.groupby("dataset", sort=True):
        t = ablation_table(sub, [m for m in METRICS if m in sub], arm_order=order).drop(columns="trials")
        t = t.rename(columns={m: f"{name} {m.removeprefix('final.').upper()}" for m in METRICS})
        out = out.merge(t, on="arm", how="left")
        if any(name in cells for cells in PAPER.scores.values()):
            for m in PAPER.metrics:
                out[f"{name} {m} (paper)"] = [PAPER.score(a, name, m) for a in out["arm"]]
    return sort_in_order(out, "arm", order)


def table4(done: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per arm and dataset: ACC of argmax zc and of k-means on z, zc, zs (mean over seeds)."""
    rows = []
    for (name, arm), sub in done.groupby(["dataset", "arm"], sort=True):
        row = {"dataset": name, "arm": arm}
        row.update({view: round(float(sub[col].mean()), 4) for view, col in VIEWS.items() if col in sub})
        rows.append(row)
    return (
        sort_in_order(pd.DataFrame(rows), "arm", order)
        .sort_values("dataset", kind="stable")
        .reset_index(drop=True)
    )


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    done = finished_or_exit(sweep_dirs)
    order = arm_order(sweep_dirs)
    png = bar_chart(done, "arm", "final.acc", out / "fig_ablation.png", hue="dataset", order=order, paper=PAPER,
                    title="DCCS Table 5: loss ablation")  # fmt: skip
    written = [png, png.with_suffix(".svg"), *write_table(table5(done, order), out / "table5_ablation")]
    return written + write_table(table4(done, order), out / "table4_assignment")


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
