"""IDFD Table 1 (Tao, Takagi, Nakata, ICLR 2021, Sec. 4.1): ID(original), ID(tuned), IDFO and IDFD per dataset.

Reads one or more sweep folders (e.g. idfd_ablation plus idfd_ablation_stl10 run with IDFO's alpha 0.5, see the
YAML) and writes arms x datasets tables of ACC/NMI/ARI in %, mean ± std over seeds:
- ``table1_final``: the value at each trial's last evaluation (no label selection);
- ``table1_best_label_selected``: the best evaluation of each trial chosen WITH the labels (the paper's "best
  performances"; an oracle, marked so);
- ``table1_long``: the same numbers unformatted; ``table1_paper``: the paper's Table 1 rows, for comparison;
- ``table1_acc.png``/``.svg``: final ACC per arm and dataset (mean ± std over seeds), the paper's values marked.
An arm run with several alphas (IDFO: 10 on CIFAR, 0.5 on STL-10/ImageNet) gets one row per alpha.

Usage: python analysis/idfd_ablation.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]  (default: first SWEEP_DIR/analysis)
"""

from __future__ import annotations

from pathlib import Path

from tuneclust.papers import Paper, analysis_cli, bar_chart, row_labels, write_wide_tables
from tuneclust.render import write_table
from tuneclust.results import arm_order, load_trials

DATASETS = ["cifar10", "cifar100", "stl10", "imagenet10", "imagenet_dog", "imagefolder", "digits"]
PAPER = Paper(
    "Tao et al. 2021, Table 1",
    ("ACC", "NMI", "ARI"),
    {
        "ID_original": {"cifar10": (.440, .309, .221), "cifar100": (.267, .221, .108), "stl10": (.514, .362, .285),
                        "imagenet10": (.632, .478, .420), "imagenet_dog": (.365, .248, .172)},
        "ID_tuned": {"cifar10": (.776, .682, .616), "cifar100": (.409, .392, .243), "stl10": (.726, .640, .526),
                     "imagenet10": (.937, .867, .865), "imagenet_dog": (.476, .470, .335)},
        "IDFO": {"cifar10": (.828, .714, .679), "cifar100": (.425, .432, .244), "stl10": (.756, .636, .569),
                 "imagenet10": (.942, .871, .876), "imagenet_dog": (.612, .579, .414)},
        "IDFD": {"cifar10": (.815, .711, .663), "cifar100": (.425, .426, .264), "stl10": (.756, .643, .575),
                 "imagenet10": (.954, .898, .901), "imagenet_dog": (.591, .546, .413)},
    },
)  # fmt: skip


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    trials = load_trials(sweep_dirs)
    trials["row"] = row_labels(trials, "arm", vary="config.alpha")  # IDFO is run with alpha 10 and 0.5
    arms = arm_order(sweep_dirs)
    written = write_table(PAPER.table("arm"), out / "table1_paper")
    written += write_wide_tables(trials, "row", "dataset", arms, DATASETS, out, "table1", {"row": "arm"})
    done = trials[trials["status"] == "TERMINATED"] if "final.acc" in trials else trials.iloc[0:0]
    if not done.empty:
        title = "IDFD Table 1: final ACC per arm and dataset"
        png = bar_chart(done, "arm", "final.acc", out / "table1_acc.png", hue="dataset", order=arms, paper=PAPER,
                        title=title)  # fmt: skip
        written += [png, png.with_suffix(".svg")]
    return written


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
