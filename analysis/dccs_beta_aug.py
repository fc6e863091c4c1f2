"""DCCS (Zhao et al., ECCV 2020), Fig. 5: ACC, NMI and ARI against beta_Aug, one panel per dataset.

Usage: python analysis/dccs_beta_aug.py <sweep_dir> [<sweep_dir> ...] [--out DIR]

Writes fig5_beta_aug.png/.svg (one panel per dataset: mean ± std over seeds of each metric against beta_Aug, the
paper's choice marked), acc_vs_beta_aug.png/.svg (ACC, one line per dataset) and beta_aug.md/.csv/.tex (mean,
std, median, count per dataset and beta_Aug). Values at the last evaluation: no selection by labels. Several
sweep folders (e.g. one per dataset) are pooled; the dataset is ``data.name`` of each trial, else the sweep's spec.
"""

from __future__ import annotations

from pathlib import Path

from tuneclust.papers import Paper, analysis_cli, sensitivity_study

PAPER = Paper("Zhao et al. 2020, Sec. 4.1.3", choice={"fmnist": 2.0, "cifar10": 4.0})
"""beta_Aug the paper picked per dataset; Fig. 5 itself is a curve only."""


def build(sweep_dirs: list[Path], out: Path) -> list[Path]:
    return sensitivity_study(
        sweep_dirs, out, "config.beta_aug", "fig5_beta_aug", "DCCS Fig. 5: {}", "beta_Aug", PAPER
    )


def main(argv: list[str] | None = None) -> int:
    return analysis_cli(__doc__, build, argv)


if __name__ == "__main__":
    raise SystemExit(main())
