"""IDFD Table 2 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.2.3): ID(tuned) and IDFD on four networks (CIFAR-10).

Writes arms x backbones tables of ACC/NMI/ARI in %, mean ± std over seeds: ``table2_final`` (value at the
last evaluation), ``table2_best_label_selected`` (best evaluation chosen WITH the labels, marked so),
``table2_long`` (the numbers) and ``table2_paper`` (the paper's Table 2); plus ``table2_acc.png``/``.svg``, ACC
per backbone and arm (mean ± std over seeds, final values, the paper's values marked).

Usage: python analysis/idfd_backbones.py SWEEP_DIR [--out DIR]  (default DIR: SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

from tuneclust.papers import Paper, analysis_cli, bar_chart, write_wide_tables
from tuneclust.render import write_table
from tuneclust.results import arm_order, load_trials

BACKBONES = ["convnet", "vgg16", "resnet18", "resnet34"]
PAPER = Paper(
    "Tao et al. 2021, Table 2",
    ("ACC", "NMI", "ARI"),
    {
        "ID_tuned": {"convnet": (.268, .150, .089), "vgg16": (.393, .316, .209), "resnet18": (.776, .682, .616),
                     "resnet34": (.802, .711, .646)},
        "IDFD": {"convnet": (.420, .327, .232), "vgg16": (.568, .467, .365), "resnet18": (.815, .711, .663),
                 "resnet34": (.827, .734, .684)},
    },
)  # fmt: skip


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials = load_trials(sweep_dirs)
    arms = arm_order(sweep_dirs)
    written = write_table(PAPER.table("arm"), out / "table2_paper")
    written += write_wide_tables(
        trials, "arm", "config.backbone", arms, BACKBONES, out, "table2", {"config.backbone": "backbone"}
    )
    if "final.acc" in trials:
        done = trials[trials["status"] == "TERMINATED"]
        png = bar_chart(done, "arm", "final.acc", out / "table2_acc.png", hue="config.backbone", order=arms,
                        paper=PAPER, title="IDFD Table 2: ID(tuned) vs IDFD per network")  # fmt: skip
        written += [png, png.with_suffix(".svg")]
    return written


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv, multi=False)


if __name__ == "__main__":
    raise SystemExit(main())
