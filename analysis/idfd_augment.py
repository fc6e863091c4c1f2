"""IDFD Fig. 11 / Table 4 (Tao, Takagi, Nakata, ICLR 2021, App. C.3): the effect of each data augmentation.

Arms of analysis interest: ``all``, ``no_crop``, ``no_color``, ``no_gray``, ``no_flip`` (Fig. 11) and ``no_aug``
(Table 4's "W/O DA"). Writes ``fig11_acc.png``/``.svg`` (final ACC per arm, mean ± std over seeds, the paper's
IDFD with and without augmentation marked), ``fig11_final`` (ACC/NMI/ARI per arm at the last evaluation),
``fig11_best_label_selected`` (best evaluation chosen WITH the labels, marked so) and ``table4_paper`` (the
paper's CIFAR-10 rows with and without augmentation).

Usage: python analysis/idfd_augment.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

from tuneclust.papers import Paper, analysis_cli, bar_chart
from tuneclust.render import ablation_table, write_table
from tuneclust.results import arm_order, load_trials

PAPER = Paper(
    "Tao et al. 2021, Table 4 (CIFAR-10)",
    ("ACC", "NMI", "ARI"),
    {
        "ID W/O DA": {"cifar10": (0.187, 0.095, 0.041)},
        "IDFD W/O DA": {"cifar10": (0.236, 0.121, 0.060)},
        "ID With DA": {"cifar10": (0.766, 0.657, 0.583)},
        "IDFD With DA": {"cifar10": (0.815, 0.711, 0.663)},
    },
)
ARM_ROWS = {"all": "IDFD With DA", "no_aug": "IDFD W/O DA"}
"""The arms the paper reports (the study's model is IDFD): its Table 4 row for each."""


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials = load_trials(sweep_dirs)
    arms = arm_order(sweep_dirs)
    written = write_table(PAPER.table(), out / "table4_paper")
    for prefix in ("final", "best_label_selected"):
        cols = [f"{prefix}.{m}" for m in ("acc", "nmi", "ari") if f"{prefix}.{m}" in trials]
        if not cols:
            continue
        table = ablation_table(trials, cols, arm_order=arms)
        if prefix != "final":
            table = table.rename(columns={"arm": "arm (best evaluation, LABEL-SELECTED)"})
        written += write_table(table, out / f"fig11_{prefix}")
    if "final.acc" in trials:
        done = trials[trials["status"] == "TERMINATED"]
        paper = Paper(PAPER.source, PAPER.metrics, {a: PAPER.scores[r] for a, r in ARM_ROWS.items()})
        png = bar_chart(done, "arm", "final.acc", out / "fig11_acc.png", order=arms, paper=paper,
                        title="IDFD Fig. 11: effect of each augmentation")  # fmt: skip
        written += [png, png.with_suffix(".svg")]
    return written


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
